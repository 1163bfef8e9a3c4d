package supplychain

import (
	"sort"
)

// ScriptPolicy decides which dependencies may run install scripts
// (preinstall/install/postinstall), the usual vehicle of npm supply-chain
// attacks. The zero value runs none.
type ScriptPolicy struct {
	// AllowAll runs every install script (plain npm ci). Only for projects
	// whose whole dependency tree is trusted.
	AllowAll bool
	// Allow names the packages (e.g. "esbuild", "@swc/core") whose install
	// scripts run after the scripts-free install.
	Allow []string
}

// ScriptPlan is what the agent runs inside the sandbox to honour a
// ScriptPolicy, and what it reports in the job log.
type ScriptPlan struct {
	// Install is the install command's argv: "npm ci --ignore-scripts", or
	// "npm ci" when every script is allowed.
	Install []string
	// Rebuild is the follow-up argv that runs the lifecycle scripts of the
	// allowed packages ("npm rebuild --ignore-scripts=false --foreground-scripts NAME...": the
	// scripts' output goes to the job log), or
	// nil when there is nothing to run. npm rebuild runs preinstall,
	// install and postinstall of the named packages, every copy of them.
	Rebuild []string
	// Allowed are the entries with install scripts that will run.
	Allowed []Package
	// Blocked are the entries with install scripts that will not run; the
	// agent prints them so a developer can see what was skipped.
	Blocked []Package
}

// PlanScripts resolves a ScriptPolicy against a lockfile.
func PlanScripts(lf *Lockfile, p ScriptPolicy) ScriptPlan {
	withScripts := lf.ScriptPackages()
	if p.AllowAll {
		return ScriptPlan{Install: []string{"npm", "ci"}, Allowed: withScripts}
	}
	plan := ScriptPlan{Install: []string{"npm", "ci", "--ignore-scripts"}}
	allow := make(map[string]bool, len(p.Allow))
	for _, n := range p.Allow {
		allow[n] = true
	}
	names := map[string]bool{}
	for _, pkg := range withScripts {
		// validName keeps anything that could read as a flag out of argv;
		// the gate already refuses such names.
		if allow[pkg.Name] && validName(pkg.Name) {
			plan.Allowed = append(plan.Allowed, pkg)
			names[pkg.Name] = true
		} else {
			plan.Blocked = append(plan.Blocked, pkg)
		}
	}
	if len(names) > 0 {
		sorted := make([]string, 0, len(names))
		for n := range names {
			sorted = append(sorted, n)
		}
		sort.Strings(sorted)
		plan.Rebuild = append([]string{"npm", "rebuild", "--ignore-scripts=false", "--foreground-scripts"}, sorted...)
	}
	return plan
}
