//go:build !linux

package dedup

import "errors"

func dropFileCache(string) error { return errors.New("not supported on this system") }
