package api

import "testing"

func TestParseOnViolationIsStrict(t *testing.T) {
	for in, want := range map[string]OnViolation{"": "", "deny": OnViolationDeny, "kill": OnViolationKill} {
		if got, err := ParseOnViolation(in); err != nil || got != want {
			t.Errorf("ParseOnViolation(%q) = %q, %v", in, got, err)
		}
	}
	for _, bad := range []string{"log", "KILL", " deny", "allow"} {
		if _, err := ParseOnViolation(bad); err == nil {
			t.Errorf("ParseOnViolation(%q) accepted", bad)
		}
	}
	if !OnViolationKill.Kill() || OnViolationDeny.Kill() || OnViolation("").Kill() {
		t.Error("Kill() is true only for kill")
	}
}
