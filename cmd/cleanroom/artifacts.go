package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func init() {
	var out string
	cmd := &cobra.Command{
		Use:   "artifacts JOB [-o DIR]",
		Short: "List a job's artifacts, or download them all into DIR (sha256 checked)",
		Args:  cobra.ExactArgs(1),
	}
	cf := addClientFlags(cmd, true)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		cl, err := cf.client()
		if err != nil {
			return err
		}
		ctx := cmd.Context()
		arts, err := cl.ListArtifacts(ctx, args[0])
		if err != nil {
			return fmt.Errorf("listing artifacts of %s: %w", args[0], err)
		}
		if out == "" {
			if cf.json {
				return printJSONList(arts)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tKIND\tSIZE\tSHA256")
			for _, a := range arts {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", a.Name, a.Kind, a.Size, a.SHA256)
			}
			return tw.Flush()
		}
		if err := os.MkdirAll(out, 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", out, err)
		}
		// Writes go through os.Root: an artifact name can never place a
		// file outside DIR.
		root, err := os.OpenRoot(out)
		if err != nil {
			return fmt.Errorf("opening %s: %w", out, err)
		}
		defer root.Close()
		for _, a := range arts {
			if d := path.Dir(a.Name); d != "." {
				if err := root.MkdirAll(d, 0o755); err != nil {
					return fmt.Errorf("creating directory for %s: %w", a.Name, err)
				}
			}
			f, err := root.OpenFile(a.Name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
			if err != nil {
				return fmt.Errorf("creating %s: %w", a.Name, err)
			}
			h := sha256.New()
			_, err = cl.DownloadArtifact(ctx, args[0], a.Name, io.MultiWriter(f, h))
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("downloading %s: %w", a.Name, err)
			}
			if got := hex.EncodeToString(h.Sum(nil)); got != a.SHA256 {
				return fmt.Errorf("downloading %s: sha256 %s, coordinator says %s", a.Name, got, a.SHA256)
			}
			fmt.Fprintf(os.Stderr, "%s (%s, %d bytes)\n", a.Name, a.Kind, a.Size)
		}
		return nil
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "download every artifact into this directory")
	rootCmd.AddCommand(cmd)
}
