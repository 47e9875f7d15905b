//go:build !unix

package wal

import (
	"fmt"
	"os"
	"path/filepath"
)

// lockDir only creates <dir>/LOCK on systems without flock.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "LOCK"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	return f, nil
}

// flockShared does nothing on systems without flock.
func flockShared(*os.File) error { return nil }
