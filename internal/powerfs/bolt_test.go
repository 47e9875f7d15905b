package powerfs

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

const (
	childEnv    = "POWERFS_TEST_CHILD"
	childDirEnv = "POWERFS_TEST_DIR"
	boltTxs     = 5000 // bound of the writer child's transactions
)

var boltBucket = []byte("b")

// boltValue is the value of key i: 1 to 16 KiB, so that the file grows and
// bbolt remaps it.
func boltValue(i int) []byte {
	return bytes.Repeat([]byte{byte(i)}, 1024*(1+i%16))
}

func boltKey(i int) []byte { return binary.BigEndian.AppendUint64(nil, uint64(i)) }

// runChild runs the bbolt work of TestBoltSurvivesCut in this (child)
// process and returns its exit status.
func runChild(mode, dir string) int {
	var err error
	switch mode {
	case "bolt-write":
		err = boltWriter(dir)
	case "bolt-check":
		var n int
		if n, err = strconv.Atoi(os.Getenv("POWERFS_TEST_ACKED")); err == nil {
			err = boltCheck(dir, n)
		}
	default:
		err = fmt.Errorf("unknown child mode %q", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 3
	}
	return 0
}

// boltWriter commits one key per transaction and prints its number once
// the commit returned, until it is killed. After each commit it reads the
// new key and an older one back through bbolt's mmap.
func boltWriter(dir string) error {
	db, err := bolt.Open(filepath.Join(dir, "index.db"), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	if err := d.Sync(); err != nil { // bbolt does not fsync the directory
		return err
	}
	for i := range boltTxs {
		err := db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists(boltBucket)
			if err != nil {
				return err
			}
			return b.Put(boltKey(i), boltValue(i))
		})
		if err != nil {
			return err
		}
		err = db.View(func(tx *bolt.Tx) error {
			b := tx.Bucket(boltBucket)
			for _, k := range []int{i, i / 2} {
				if !bytes.Equal(b.Get(boltKey(k)), boltValue(k)) {
					return fmt.Errorf("key %d reads back wrong right after commit %d", k, i)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		fmt.Println(i)
	}
	return db.Close()
}

// boltCheck opens the database and checks that keys 0..acked are there
// with their values, and any later key whole.
func boltCheck(dir string, acked int) error {
	db, err := bolt.Open(filepath.Join(dir, "index.db"), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return err
	}
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(boltBucket)
		if b == nil {
			return fmt.Errorf("no bucket")
		}
		for i := 0; i <= acked; i++ {
			if !bytes.Equal(b.Get(boltKey(i)), boltValue(i)) {
				return fmt.Errorf("committed key %d lost or wrong", i)
			}
		}
		return b.ForEach(func(k, v []byte) error {
			if i := int(binary.BigEndian.Uint64(k)); !bytes.Equal(v, boltValue(i)) {
				return fmt.Errorf("key %d has a wrong value", i)
			}
			return nil
		})
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	return err
}

// TestBoltSurvivesCut runs bbolt on the mount (in a child process), kills
// it after some commits, cuts the power in torn mode and checks that every
// commit that had returned is there.
func TestBoltSurvivesCut(t *testing.T) {
	m := mountFS(t)
	for round := range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"=bolt-write", childDirEnv+"="+m.mnt)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		acked := -1
		sc := bufio.NewScanner(out)
		for sc.Scan() && acked < 300*(round+1) {
			if acked, err = strconv.Atoi(sc.Text()); err != nil {
				t.Fatalf("child printed %q", sc.Text())
			}
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		if acked < 300*(round+1) {
			t.Fatalf("round %d: writer stopped after commit %d: %s", round, acked, stderr.String())
		}
		rep := m.cut(Torn, uint64(round))
		t.Logf("round %d: killed after commit %d; %s", round, acked, rep)

		check := exec.Command(os.Args[0], "-test.run=^$")
		check.Env = append(os.Environ(), childEnv+"=bolt-check", childDirEnv+"="+m.mnt,
			"POWERFS_TEST_ACKED="+strconv.Itoa(acked))
		if out, err := check.CombinedOutput(); err != nil {
			t.Fatalf("round %d: check: %v\n%s", round, err, out)
		}
		if err := os.Remove(m.path("index.db")); err != nil {
			t.Fatal(err)
		}
	}
}
