package powerfs

import (
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// The bbolt test runs its bbolt work in a child process (see doc.go:
	// the serving process must not mmap its own mount).
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(runChild(mode, os.Getenv(childDirEnv)))
	}
	goleak.VerifyTestMain(m)
}

var (
	availableOnce sync.Once
	availableErr  error
)

// requireFUSE skips the test where no FUSE file system can be mounted and
// fails it where mounting is broken in another way.
func requireFUSE(tb testing.TB) {
	tb.Helper()
	availableOnce.Do(func() { availableErr = Available() })
	if errors.Is(availableErr, ErrUnavailable) {
		tb.Skipf("skipping: %v", availableErr)
	}
	if availableErr != nil {
		tb.Fatalf("powerfs probe: %v", availableErr)
	}
}

// mounted is a powerfs mounted for a test; remount swaps it for a new one.
type mounted struct {
	tb      testing.TB
	fs      *FS
	backing string
	mnt     string
}

// mountFS mounts a powerfs over a new empty directory; the test's cleanup
// unmounts it.
func mountFS(tb testing.TB) *mounted {
	tb.Helper()
	requireFUSE(tb)
	dir := tb.TempDir()
	m := &mounted{tb: tb, backing: filepath.Join(dir, "backing"), mnt: filepath.Join(dir, "mnt")}
	for _, d := range []string{m.backing, m.mnt} {
		if err := os.Mkdir(d, 0o700); err != nil {
			tb.Fatal(err)
		}
	}
	m.mount()
	tb.Cleanup(func() {
		if err := m.fs.Unmount(); err != nil {
			tb.Errorf("unmount: %v", err)
		}
	})
	return m
}

func (m *mounted) mount() {
	m.tb.Helper()
	fsys, err := Mount(m.backing, m.mnt, nil)
	if err != nil {
		m.tb.Fatalf("mount: %v", err)
	}
	m.fs = fsys
}

// cut cuts the power, unmounts and mounts the durable state again.
func (m *mounted) cut(mode Mode, seed uint64) CutReport {
	m.tb.Helper()
	rep, err := m.fs.Cut(mode, rand.New(rand.NewPCG(seed, 1)))
	if err != nil {
		m.tb.Fatalf("cut: %v", err)
	}
	if err := m.fs.Unmount(); err != nil {
		m.tb.Fatalf("unmount: %v", err)
	}
	m.mount()
	return rep
}

// path is a path on the mount.
func (m *mounted) path(elem ...string) string {
	return filepath.Join(append([]string{m.mnt}, elem...)...)
}
