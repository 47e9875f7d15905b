package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aggregator-dev/aggregator/internal/powerfs"
)

// requirePowerFS skips the test, saying why, where no FUSE file system can
// be mounted (no /dev/fuse, or mounting not permitted: not root).
func requirePowerFS(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and kills the real binary on a FUSE mount; skipped with -short")
	}
	err := powerfs.Available()
	if errors.Is(err, powerfs.ErrUnavailable) {
		t.Skipf("skipping the power-loss drill: %v", err)
	}
	if err != nil {
		t.Fatalf("powerfs probe: %v", err)
	}
}

// buildTagged builds cmd/aggregator with tags.
func buildTagged(t *testing.T, tags string) string {
	t.Helper()
	bin, err := buildServer(context.Background(), "../aggregator", tags, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

func runPowerDrill(t *testing.T, cfg powerConfig) (powerResult, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	out := &lineLogger{tb: t}
	cfg.WorkDir, cfg.Out = t.TempDir(), out
	res, err := powerDrill(ctx, cfg)
	if err != nil {
		t.Fatalf("powerloss drill: %v", err)
	}
	return res, out.all.String()
}

// TestPowerLoss is the power-loss drill, shortened, on the real
// cmd/aggregator: kill -9 and a power cut at a random moment under load,
// in both modes, then every acknowledged event must be listed once.
func TestPowerLoss(t *testing.T) {
	requirePowerFS(t)
	bin := buildTagged(t, "")
	const cycles = 3
	res, out := runPowerDrill(t, powerConfig{
		Server: bin, Cycles: cycles,
		Gen: genConfig{Events: 4000, Batch: 25, Format: formatArray, PayloadSize: 128,
			DupFraction: 0.2, Topics: 3, Seed: uint64(time.Now().UnixNano())},
		Concurrency: 4, Timeout: 30 * time.Second,
		ServerArgs: []string{"--segment-size", "65536"},
	})
	if want := 2*cycles + 2; res.Failed != 0 || res.Passed != want {
		log, _ := os.ReadFile(filepath.Join(res.WorkDir, "server.log"))
		t.Fatalf("%d passed, %d failed (want %d passed); server log tail:\n%s", res.Passed, res.Failed, want,
			tail(string(log), 3000))
	}
	if !strings.Contains(out, "missing 0, listed twice 0") || res.Final.Acked == 0 {
		t.Fatalf("no final check of the acknowledged events: %+v", res.Final)
	}
}

// TestPowerLossCatchesMissingFsync runs the drill against a server whose
// log does not fsync (build tag powerloss_nofsync): the drill must fail.
// With the consumer held back (a long --chunk-delay), the index cannot
// mask the loss and the listing must miss acknowledged events; with the
// defaults, the index is ahead of the log after the cut and the server
// refuses to start.
func TestPowerLossCatchesMissingFsync(t *testing.T) {
	requirePowerFS(t)
	bin := buildTagged(t, "powerloss_nofsync")
	for _, tc := range []struct {
		name, want string
		args       []string
	}{
		{"listing", "FAIL: verify: acknowledged", []string{"--chunk-delay", "5s"}},
		{"restart", "is ahead of the log's last offset", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, out := runPowerDrill(t, powerConfig{
				Server: bin, Cycles: 1, Modes: []powerfs.Mode{powerfs.DropAll},
				Gen: genConfig{Events: 2000, Batch: 20, Format: formatArray, PayloadSize: 64,
					DupFraction: 0.2, Topics: 2, Seed: 11},
				Concurrency: 4, Timeout: 30 * time.Second, ServerArgs: tc.args,
			})
			log, _ := os.ReadFile(filepath.Join(res.WorkDir, "server.log"))
			if res.Failed == 0 || !strings.Contains(out+string(log), tc.want) {
				t.Fatalf("%d passed, %d failed; want a failure with %q; server log tail:\n%s",
					res.Passed, res.Failed, tc.want, tail(string(log), 2000))
			}
		})
	}
}

// TestPowerFSLockRefusesSecondServer: the service's flock on its LOCK
// files works on powerfs, so a second server on the same data directory
// exits at once.
func TestPowerFSLockRefusesSecondServer(t *testing.T) {
	requirePowerFS(t)
	bin := buildTagged(t, "")
	dir := t.TempDir()
	backing, mnt := filepath.Join(dir, "backing"), filepath.Join(dir, "mnt")
	for _, d := range []string{backing, mnt} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	fsys, err := powerfs.Mount(backing, mnt, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := fsys.Unmount(); err != nil {
			t.Error(err)
		}
	}()
	addr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	first, err := startServer(bin, addr, filepath.Join(mnt, "data"), &lineLogger{tb: t})
	if err != nil {
		t.Fatal(err)
	}
	defer first.kill()
	c := newClient(1)
	defer c.CloseIdleConnections()
	if _, err := waitReady(context.Background(), c, "http://"+addr, first, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	second, err := exec.CommandContext(ctx, bin, "--addr", "127.0.0.1:0", "--data-dir", filepath.Join(mnt, "data")).CombinedOutput()
	if err == nil || !strings.Contains(string(second), "in use by another aggregator process") {
		t.Fatalf("second server: %v\n%s", err, second)
	}
}
