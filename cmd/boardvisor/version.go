package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// version may be set at build time with -ldflags "-X main.version=v1.2.3"; otherwise
// it is the module version in the build info ("(devel)" for a build from a checkout).
var version = ""

// commit may be set at build time with -ldflags "-X main.commit=$(git rev-parse HEAD)"
// (the Makefile does): Go stamps no VCS information in a git worktree, nor with
// -buildvcs=false. The build info's vcs.revision wins when there is one.
var commit = ""

// buildInfo is what `boardvisor version` reports.
type buildInfo struct {
	Version   string `json:"version"`
	Commit    string `json:"commit,omitempty"`
	CommitAt  string `json:"commitTime,omitempty"`
	Modified  bool   `json:"modified,omitempty"`
	GoVersion string `json:"go"`
	Platform  string `json:"platform"`
}

func readBuildInfo() buildInfo {
	bi := buildInfo{Version: version, Commit: commit, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		if bi.Version == "" {
			bi.Version = "unknown"
		}
		return bi
	}
	if bi.Version == "" {
		bi.Version = info.Main.Version
	}
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			bi.Commit = s.Value
		case "vcs.time":
			bi.CommitAt = s.Value
		case "vcs.modified":
			bi.Modified = s.Value == "true"
		}
	}
	if bi.Version == "" {
		bi.Version = "(devel)"
	}
	return bi
}

// versionString is the version the daemons announce (Hello, logs): the version, and the
// commit when there is one.
func versionString() string {
	bi := readBuildInfo()
	if bi.Commit == "" {
		return bi.Version
	}
	s := bi.Version + "+" + short(bi.Commit)
	if bi.Modified {
		s += "-modified"
	}
	return s
}

// versionLine is --version's answer.
func versionLine() string {
	bi := readBuildInfo()
	s := "boardvisor " + bi.Version
	if bi.Commit != "" {
		s += fmt.Sprintf(" (commit %s", short(bi.Commit))
		if bi.CommitAt != "" {
			s += " of " + bi.CommitAt
		}
		if bi.Modified {
			s += ", with local changes"
		}
		s += ")"
	}
	return s + ", " + bi.GoVersion + " " + bi.Platform
}

func short(commit string) string {
	if len(commit) > 12 {
		return commit[:12]
	}
	return commit
}

func newVersion() *cobra.Command {
	var out *outputFlag
	cmd := &cobra.Command{
		Use:   "version [-o table|json|yaml]",
		Short: "print boardvisor's version, commit and Go version (from the build info)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := out.check(); err != nil {
				return err
			}
			if out.format == outTable || out.format == outWide {
				fmt.Println(versionLine())
				return nil
			}
			return printData(os.Stdout, out.format, readBuildInfo())
		},
	}
	out = addOutput(cmd)
	return cmd
}
