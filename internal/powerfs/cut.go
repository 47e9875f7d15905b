package powerfs

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Mode says what a cut keeps of the unsynced operations.
type Mode int

const (
	// DropAll keeps none: every file and directory as of its last fsync.
	DropAll Mode = iota
	// Torn keeps a random prefix of each file's and each directory's
	// unsynced operations, the last kept write possibly in part.
	Torn
)

func (m Mode) String() string {
	switch m {
	case DropAll:
		return "drop-all"
	case Torn:
		return "torn"
	}
	return fmt.Sprintf("mode(%d)", int(m))
}

// ParseMode parses "drop-all" or "torn".
func ParseMode(s string) (Mode, error) {
	for _, m := range []Mode{DropAll, Torn} {
		if s == m.String() {
			return m, nil
		}
	}
	return 0, fmt.Errorf("powerfs: unknown mode %q (want drop-all or torn)", s)
}

// CutReport says what a cut dropped and kept.
type CutReport struct {
	Mode         Mode
	Files        int   // files that had unsynced data operations
	DataOps      int   // their unsynced writes and truncates
	DataOpsKept  int   // of those, kept (a torn write counts as kept)
	TornWrites   int   // writes kept in part
	BytesDropped int64 // bytes of writes dropped, torn-off parts included
	Dirs         int   // directories that had unsynced entry changes
	Changes      int   // their unsynced entry changes
	ChangesKept  int   // of those, kept
	Copies       int   // files left under a second name, as a copy
	// What was dropped where ("path: 3 of 5 dropped"), paths as they were
	// before the cut; at most maxListed entries each.
	FilesHit []string
	DirsHit  []string
	Vanished []string // paths gone after the cut
	Revived  []string // paths back after the cut (undone removals and renames)
}

// maxListed bounds the paths listed in a CutReport.
const maxListed = 20

// appendListed appends s to list unless it holds maxListed entries already
// (then "..." once).
func appendListed(list []string, s string) []string {
	switch {
	case len(list) < maxListed:
		return append(list, s)
	case len(list) == maxListed:
		return append(list, "...")
	}
	return list
}

// name is the path of ino relative to the root, as it is now.
func (p *FS) name(ino *inode) string {
	switch {
	case ino == p.root:
		return "."
	case ino.parent == nil:
		return fmt.Sprintf("(removed #%d)", ino.id)
	case ino.parent == p.root:
		return ino.name
	}
	return p.name(ino.parent) + "/" + ino.name
}

func (r CutReport) String() string {
	s := fmt.Sprintf("power cut (%s): kept %d of %d unsynced writes and truncates in %d files (%d torn, %d bytes dropped), "+
		"%d of %d entry changes in %d directories", r.Mode, r.DataOpsKept, r.DataOps, r.Files, r.TornWrites,
		r.BytesDropped, r.ChangesKept, r.Changes, r.Dirs)
	if len(r.FilesHit)+len(r.DirsHit) > 0 {
		s += "; dropped: " + strings.Join(append(slices.Clone(r.FilesHit), r.DirsHit...), ", ")
	}
	if len(r.Vanished) > 0 {
		s += "; vanished: " + strings.Join(r.Vanished, " ")
	}
	if len(r.Revived) > 0 {
		s += "; came back: " + strings.Join(r.Revived, " ")
	}
	return s
}

// Cut cuts the power: it freezes the file system, so that every later
// operation on the mount fails with EIO, and rewrites the backing directory
// to the state the mode leaves (see the package documentation). Torn mode
// draws from rng. Stop the program under test first (kill -9 and wait for
// its exit), and Unmount afterwards. An error leaves the backing directory
// in an undefined state.
func (p *FS) Cut(mode Mode, rng *rand.Rand) (CutReport, error) {
	rep := CutReport{Mode: mode}
	if mode != DropAll && mode != Torn {
		return rep, fmt.Errorf("powerfs: cut: unknown mode %d", int(mode))
	}
	if mode == Torn && rng == nil {
		return rep, errors.New("powerfs: cut: torn mode needs a random source")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.unmounted:
		return rep, ErrUnmounted
	case p.cut:
		return rep, ErrCut
	}
	p.cut = true
	p.frozen.Store(true)
	if mode == DropAll {
		rng = nil
	}
	before := p.paths(func(d *inode) map[string]*inode { return d.children })
	for _, id := range slices.Sorted(maps.Keys(p.inodes)) {
		if ino := p.inodes[id]; !ino.dir && len(ino.ops) > 0 {
			if err := p.revertData(ino, rng, &rep); err != nil {
				return rep, fmt.Errorf("powerfs: cut: %w", err)
			}
		}
	}
	entries := p.entriesAfterCut(rng, &rep)
	after := p.paths(func(d *inode) map[string]*inode { return entries[d] })
	if err := p.rebuild(entries, &rep); err != nil {
		return rep, fmt.Errorf("powerfs: cut: %w", err)
	}
	rep.Vanished = missingFrom(before, after)
	rep.Revived = missingFrom(after, before)
	return rep, nil
}

// revertData undoes the file's dropped data operations, last first, in its
// backing file. rng nil drops them all.
func (p *FS) revertData(ino *inode, rng *rand.Rand, rep *CutReport) error {
	ops := ino.ops
	keep, tear := 0, int64(0)
	if rng != nil {
		keep = rng.IntN(len(ops) + 1)
		if keep < len(ops) && !ops[keep].truncate && ops[keep].n > 1 && rng.IntN(2) == 0 {
			tear = 1 + rng.Int64N(ops[keep].n-1)
		}
	}
	rep.Files++
	rep.DataOps += len(ops)
	rep.DataOpsKept += keep
	what := fmt.Sprintf("%s: %d of %d", p.name(ino), len(ops)-keep, len(ops))
	if tear > 0 {
		what += fmt.Sprintf(" (write %d torn after %d of %d bytes)", keep+1, tear, ops[keep].n)
	}
	rep.FilesHit = appendListed(rep.FilesHit, what)
	f, err := os.OpenFile(p.location(ino), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	for i := len(ops) - 1; i >= keep; i-- {
		op := &ops[i]
		if i == keep && tear > 0 {
			err = op.keepPrefix(f, tear)
			rep.DataOpsKept++
			rep.TornWrites++
			rep.BytesDropped += op.n - tear
		} else {
			err = op.undo(f)
			rep.BytesDropped += op.n
		}
		if err != nil {
			break
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("revert %s: %w", p.location(ino), err)
	}
	ino.ops = nil
	return nil
}

// entriesAfterCut returns every directory's entries as the cut leaves
// them: the durable entries, plus the kept prefix of the changes.
func (p *FS) entriesAfterCut(rng *rand.Rand, rep *CutReport) map[*inode]map[string]*inode {
	entries := make(map[*inode]map[string]*inode)
	for _, id := range slices.Sorted(maps.Keys(p.inodes)) {
		d := p.inodes[id]
		if !d.dir {
			continue
		}
		e := maps.Clone(d.durable)
		keep := 0
		if len(d.changes) > 0 {
			if rng != nil {
				keep = rng.IntN(len(d.changes) + 1)
			}
			rep.Dirs++
			rep.Changes += len(d.changes)
			rep.ChangesKept += keep
			rep.DirsHit = appendListed(rep.DirsHit, fmt.Sprintf("%s/: %d of %d entry changes", p.name(d), len(d.changes)-keep, len(d.changes)))
		}
		for _, c := range d.changes[:keep] {
			c.apply(e)
		}
		entries[d] = e
	}
	return entries
}

// rebuild builds the tree of entries in a staging directory, out of the
// backing files (moved; a file under a second name is copied), then
// replaces the backing directory's contents with it.
func (p *FS) rebuild(entries map[*inode]map[string]*inode, rep *CutReport) error {
	reserved := filepath.Join(p.backing, reservedName)
	stage := filepath.Join(reserved, "stage")
	old := filepath.Join(reserved, "old")
	for _, d := range []string{stage, old} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return err
		}
	}
	placed := make(map[*inode]string)
	seen := map[*inode]bool{p.root: true}
	if err := p.place(p.root, stage, entries, placed, seen, rep); err != nil {
		return err
	}
	if err := moveEntries(p.backing, old, reservedName); err != nil {
		return err
	}
	if err := moveEntries(stage, p.backing, ""); err != nil {
		return err
	}
	return os.RemoveAll(reserved)
}

// place creates the entries of dir (and below) in the directory at dst.
func (p *FS) place(dir *inode, dst string, entries map[*inode]map[string]*inode,
	placed map[*inode]string, seen map[*inode]bool, rep *CutReport) error {
	for _, name := range slices.Sorted(maps.Keys(entries[dir])) {
		ino, target := entries[dir][name], filepath.Join(dst, name)
		switch {
		case ino.dir && seen[ino]:
			// A directory under a second name (the cut kept both ends
			// of a move between directories): it can have only one.
			continue
		case ino.dir:
			seen[ino] = true
			mode := os.FileMode(0o700) // a removed directory's mode is gone
			if ino.parent != nil {
				if fi, err := os.Stat(p.location(ino)); err == nil {
					mode = fi.Mode().Perm()
				}
			}
			if err := os.Mkdir(target, mode); err != nil {
				return err
			}
			if err := p.place(ino, target, entries, placed, seen, rep); err != nil {
				return err
			}
		case placed[ino] != "":
			if err := copyFile(placed[ino], target); err != nil {
				return err
			}
			rep.Copies++
		default:
			if err := os.Rename(p.location(ino), target); err != nil {
				return err
			}
			placed[ino] = target
		}
	}
	return nil
}

// moveEntries renames every entry of from, except skip, into to.
func moveEntries(from, to, skip string) error {
	ents, err := os.ReadDir(from)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.Name() == skip {
			continue
		}
		if err := os.Rename(filepath.Join(from, e.Name()), filepath.Join(to, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// copyFile copies the file src to a new file dst, with its mode.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, fi.Mode().Perm())
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	return errors.Join(err, out.Close())
}

// paths lists the paths (relative to the root) of the tree that entries
// describes, each directory once.
func (p *FS) paths(entries func(*inode) map[string]*inode) map[string]bool {
	out := make(map[string]bool)
	seen := map[*inode]bool{p.root: true}
	var walk func(d *inode, prefix string)
	walk = func(d *inode, prefix string) {
		for name, ino := range entries(d) {
			path := prefix + name
			out[path] = true
			if ino.dir && !seen[ino] {
				seen[ino] = true
				walk(ino, path+"/")
			}
		}
	}
	walk(p.root, "")
	return out
}

// missingFrom lists the paths of a that b lacks, sorted, at most maxListed.
func missingFrom(a, b map[string]bool) []string {
	var out []string
	for _, path := range slices.Sorted(maps.Keys(a)) {
		if !b[path] {
			out = appendListed(out, path)
		}
	}
	return out
}
