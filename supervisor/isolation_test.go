package supervisor

import (
	"strings"
	"testing"

	"github.com/boardvisor/boardvisor/connector/local"
	"github.com/boardvisor/boardvisor/jobs/hook/hooktest"
	"github.com/boardvisor/boardvisor/supervisor/config"
)

// A config's runAs and terminal settings reach the hooks' specs.
func TestBoardsFromConfigCarryHookSettings(t *testing.T) {
	cfg, err := config.Parse("c.yaml", []byte(`stateDir: /bv
defaults:
  runAs: {user: "4242", group: "4343", groups: ["20"]}
  hooks:
    beforeLease: {script: "true"}
    afterLease: {script: "true", terminal: false}
boards:
  - name: b1
  - name: b2
    runAs: {user: "7", group: "8"}
`))
	if err != nil {
		t.Fatal(err)
	}
	bs := BoardsFromConfig(cfg, nil)
	c1, c2 := bs[0].Before.Spec.Credential, bs[1].After.Spec.Credential
	if c1 == nil || c1.UID != 4242 || c1.GID != 4343 || len(c1.Groups) != 1 || c1.Groups[0] != 20 || c2 == nil || c2.UID != 7 || c2.GID != 8 {
		t.Errorf("credentials %+v %+v", c1, c2)
	}
	if bs[0].Before.Spec.Pipe || !bs[0].After.Spec.Pipe {
		t.Errorf("pipes: before %v after %v, want false true", bs[0].Before.Spec.Pipe, bs[0].After.Spec.Pipe)
	}
}

// A hookCgroup that cannot hold cgroups is an error at start, not a silent fallback.
func TestConfiguredHookCgroupMustWork(t *testing.T) {
	_, err := Start(Options{StateDir: t.TempDir(), Conn: local.New(), ShimCommand: hooktest.ShimCommand(), HookCgroup: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "is not in a cgroup v2 hierarchy") {
		t.Errorf("Start = %v, want a refusal naming the cgroup", err)
	}
}
