package dedup

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"math/bits"
	"os"
	"slices"
	"strings"
)

// This file checks the structure of an index file without bbolt. bbolt
// memory-maps the file and trusts what it reads there: a file cut short
// (copied while written, truncated) makes it touch pages beyond the end of
// the file (SIGBUS, which no recover catches), and a damaged freelist or
// page makes it panic ("invalid freelist page") or read outside the map
// (SIGSEGV). bbolt checksums only its meta pages. CheckFile reads with
// ReadAt what bbolt reads at Open and the top of every B+tree, and checks
// what bbolt would otherwise take on trust. The layout is bbolt's
// (go.etcd.io/bbolt/internal/common: page.go, meta.go, bucket.go; the
// choice of the meta page in db.go, DB.meta; the page size in
// getPageSize), in the machine's byte order as bbolt writes it.

// ErrDamaged is wrapped by the *DamageError that CheckFile returns.
var ErrDamaged = errors.New("dedup: index file damaged")

// DamageError is CheckFile's finding: the file must not be opened, since
// bbolt could crash on it.
type DamageError struct {
	Path   string // the index file
	Page   int64  // the damaged page; -1 when the damage is not in one page
	Reason string // what is wrong
}

func (e *DamageError) Error() string {
	if e.Page < 0 {
		return fmt.Sprintf("dedup: index file %s is damaged: %s", e.Path, e.Reason)
	}
	return fmt.Sprintf("dedup: index file %s is damaged: page %d: %s", e.Path, e.Page, e.Reason)
}

func (e *DamageError) Unwrap() error { return ErrDamaged }

// bbolt's on-disk layout.
const (
	boltMagic      = 0xED0CDAED
	boltVersion    = 2
	pageHeaderSize = 16 // id uint64, flags uint16, count uint16, overflow uint32
	elementSize    = 16 // a branch element (pos, ksize uint32, pgid uint64) or a leaf element (flags, pos, ksize, vsize uint32)
	metaSize       = 64 // magic, version, pageSize, flags uint32; root, sequence, freelist, pgid, txid, checksum uint64
	metaSumOffset  = 56 // the checksum is FNV-64a of the meta fields before it
	bucketHdrSize  = 16 // root pgid, sequence uint64; an inline bucket (root 0) has its page after it
	noFreelist     = ^uint64(0)

	flagBranch   = 0x01
	flagLeaf     = 0x02
	flagMeta     = 0x04
	flagFreelist = 0x10
	flagBucket   = 0x01 // leaf element: the value is a bucket

	minPageSize = 1 << 10
	maxPageSize = 1 << 24
)

// checkBudget bounds the bytes of B+tree pages CheckFile reads: it walks
// the trees breadth first, so the pages bbolt reads first (the root bucket,
// the buckets' roots and the upper branch levels) are checked whatever the
// size of the file, in a bounded time.
const checkBudget = 16 << 20

// maxFreelistBytes bounds the freelist page CheckFile reads (8 bytes per
// free page: 64 MiB is 8 million free pages); a larger one is not checked
// beyond its header.
const maxFreelistBytes = 64 << 20

var nativeEndian = binary.NativeEndian

// CheckFile checks the bbolt file at path before it is opened: the meta
// pages (magic, version, checksum, page size, as bbolt chooses between
// them), the pages they count against the file's size, the root and
// freelist page numbers, the freelist page and its entries, and the B+tree
// pages breadth first within checkBudget (page numbers, types, overflow,
// elements within their page, bucket values, no page reached twice or
// listed as free). It returns nil when the file does not exist or is empty
// (Open creates it), a *DamageError when bbolt must not open it, or the I/O
// error that kept it from reading the file. It holds bbolt's lock as a
// reader while it reads, and checks nothing (nil) when a writer holds it:
// Open then waits for the lock and fails with ErrLocked.
func CheckFile(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check index: %w", err)
	}
	defer f.Close()
	busy, err := lockShared(f)
	if err != nil {
		return fmt.Errorf("check index: %w", err)
	}
	if busy {
		// Someone writes it: what CheckFile would read may be torn. Open
		// waits for the lock and fails with ErrLocked.
		return nil
	}
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("check index: %w", err)
	}
	if fi.Size() == 0 {
		return nil
	}
	c := &fileCheck{f: f, path: path, size: fi.Size(), budget: checkBudget}
	if err := c.meta(); err != nil {
		return err
	}
	if err := c.freelist(); err != nil {
		return err
	}
	return c.walk()
}

// fileCheck is one run of CheckFile.
type fileCheck struct {
	f        *os.File
	path     string
	size     int64
	pageSize int64
	m        boltMeta // the meta page bbolt uses
	free     []uint64 // free pages, sorted
	seen     map[uint64]bool
	budget   int64
}

// boltMeta is a decoded meta page.
type boltMeta struct {
	id, flags                  uint64 // of the page header
	magic, version, pageSize   uint32
	root, freelist, pgid, txid uint64
	checksum, sum              uint64
}

func decodeMeta(b []byte) boltMeta {
	h, m := b[:pageHeaderSize], b[pageHeaderSize:pageHeaderSize+metaSize]
	sum := fnv.New64a()
	sum.Write(m[:metaSumOffset])
	return boltMeta{
		id:       nativeEndian.Uint64(h[0:]),
		flags:    uint64(nativeEndian.Uint16(h[8:])),
		magic:    nativeEndian.Uint32(m[0:]),
		version:  nativeEndian.Uint32(m[4:]),
		pageSize: nativeEndian.Uint32(m[8:]),
		root:     nativeEndian.Uint64(m[16:]),
		freelist: nativeEndian.Uint64(m[32:]),
		pgid:     nativeEndian.Uint64(m[40:]),
		txid:     nativeEndian.Uint64(m[48:]),
		checksum: nativeEndian.Uint64(m[56:]),
		sum:      sum.Sum64(),
	}
}

// valid is bbolt's Meta.Validate: what bbolt checks of a meta page.
func (m boltMeta) valid() bool {
	return m.magic == boltMagic && m.version == boltVersion && m.checksum == m.sum
}

func (c *fileCheck) damaged(page int64, format string, args ...any) error {
	return &DamageError{Path: c.path, Page: page, Reason: fmt.Sprintf(format, args...)}
}

// readMeta reads the meta page at byte pos; ok is false when the file ends
// before it.
func (c *fileCheck) readMeta(pos int64) (boltMeta, bool, error) {
	var buf [pageHeaderSize + metaSize]byte
	if pos+int64(len(buf)) > c.size {
		return boltMeta{}, false, nil
	}
	if _, err := c.f.ReadAt(buf[:], pos); err != nil {
		return boltMeta{}, false, fmt.Errorf("check index: %w", err)
	}
	return decodeMeta(buf[:]), true, nil
}

// meta finds the page size as bbolt does (the first meta page, else the
// second one at each possible page size), then picks the meta page bbolt
// uses (the valid one with the higher transaction id) and checks it
// against the file.
func (c *fileCheck) meta() error {
	m0, _, err := c.readMeta(0)
	if err != nil {
		return err
	}
	if m0.valid() {
		c.pageSize = int64(m0.pageSize)
	} else {
		for ps := int64(minPageSize); ps <= maxPageSize && ps < c.size; ps <<= 1 {
			m1, ok, err := c.readMeta(ps)
			if err != nil {
				return err
			}
			if ok && m1.valid() && int64(m1.pageSize) == ps {
				c.pageSize = ps
				break
			}
		}
	}
	if c.pageSize == 0 {
		return c.damaged(-1, "no valid meta page (magic, version or checksum wrong in both)")
	}
	if c.pageSize < minPageSize || c.pageSize > maxPageSize || bits.OnesCount64(uint64(c.pageSize)) != 1 {
		return c.damaged(0, "page size %d", c.pageSize)
	}
	if c.size < 2*c.pageSize {
		return c.damaged(-1, "file is %d bytes, shorter than its two meta pages of %d bytes", c.size, c.pageSize)
	}
	m1, _, err := c.readMeta(c.pageSize)
	if err != nil {
		return err
	}
	a, b, ida := m0, m1, int64(0)
	if m1.txid > m0.txid {
		a, b, ida = m1, m0, 1
	}
	if !a.valid() {
		a, ida = b, 1-ida
	}
	c.m = a
	return c.checkMeta(ida)
}

// checkMeta checks the meta page bbolt uses (page id) against the file.
func (c *fileCheck) checkMeta(id int64) error {
	m := c.m
	switch {
	case m.id != uint64(id) || m.flags != flagMeta:
		return c.damaged(id, "meta page header says page %d, flags %#x", m.id, m.flags)
	case int64(m.pageSize) != c.pageSize:
		return c.damaged(id, "page size %d, the other meta page says %d", m.pageSize, c.pageSize)
	case m.pgid < 4 || m.pgid > uint64(c.size/c.pageSize):
		return c.damaged(-1, "file is %d bytes, shorter than the %d pages of %d bytes its meta page counts "+
			"(cut short, or copied while written)", c.size, m.pgid, c.pageSize)
	case m.root < 2 || m.root >= m.pgid:
		return c.damaged(id, "root page %d outside 2..%d", m.root, m.pgid-1)
	case m.freelist != noFreelist && (m.freelist < 2 || m.freelist >= m.pgid):
		return c.damaged(id, "freelist page %d outside 2..%d", m.freelist, m.pgid-1)
	}
	return nil
}

// page reads page id and checks its header; it reads its overflow pages
// too (whole is true) unless that would take more than maxBytes.
func (c *fileCheck) page(id uint64, maxBytes int64, wantFlags ...uint16) (buf []byte, whole bool, err error) {
	if id < 2 || id >= c.m.pgid {
		return nil, false, c.damaged(int64(id), "page number outside 2..%d", c.m.pgid-1)
	}
	buf = make([]byte, c.pageSize)
	if _, err := c.f.ReadAt(buf, int64(id)*c.pageSize); err != nil {
		return nil, false, fmt.Errorf("check index: %w", err)
	}
	gotID, flags := nativeEndian.Uint64(buf[0:]), nativeEndian.Uint16(buf[8:])
	overflow := uint64(nativeEndian.Uint32(buf[12:]))
	if gotID != id {
		return nil, false, c.damaged(int64(id), "header says page %d (a stale or foreign page)", gotID)
	}
	if !slices.Contains(wantFlags, flags) {
		want := make([]string, len(wantFlags))
		for i, f := range wantFlags {
			want[i] = pageType(f)
		}
		return nil, false, c.damaged(int64(id), "a %s page where a %s page belongs", pageType(flags), strings.Join(want, " or "))
	}
	if overflow >= c.m.pgid-id {
		return nil, false, c.damaged(int64(id), "%d overflow pages run past the last page %d", overflow, c.m.pgid-1)
	}
	if overflow == 0 {
		return buf, true, nil
	}
	if int64(overflow+1)*c.pageSize > maxBytes {
		return buf, false, nil
	}
	buf = slices.Grow(buf, int(overflow)*int(c.pageSize))[:int64(overflow+1)*c.pageSize]
	if _, err := c.f.ReadAt(buf[c.pageSize:], int64(id+1)*c.pageSize); err != nil {
		return nil, false, fmt.Errorf("check index: %w", err)
	}
	return buf, true, nil
}

// pageType names a page type as bbolt does.
func pageType(flags uint16) string {
	switch flags {
	case flagBranch:
		return "branch"
	case flagLeaf:
		return "leaf"
	case flagMeta:
		return "meta"
	case flagFreelist:
		return "freelist"
	}
	return fmt.Sprintf("unknown (%#x)", flags)
}

// freelist checks the freelist page bbolt reads at Open.
func (c *fileCheck) freelist() error {
	if c.m.freelist == noFreelist {
		return nil
	}
	id := int64(c.m.freelist)
	buf, whole, err := c.page(c.m.freelist, maxFreelistBytes, flagFreelist)
	if err != nil || !whole {
		return err
	}
	start, count := uint64(pageHeaderSize), uint64(nativeEndian.Uint16(buf[10:]))
	if count == 0xFFFF { // the count is in the first element
		count = nativeEndian.Uint64(buf[pageHeaderSize:])
		start += 8
	}
	if count > (uint64(len(buf))-start)/8 {
		return c.damaged(id, "freelist of %d entries does not fit its %d bytes", count, len(buf))
	}
	c.free = make([]uint64, count)
	for i := range c.free {
		c.free[i] = nativeEndian.Uint64(buf[start+uint64(i)*8:])
		if c.free[i] < 2 || c.free[i] >= c.m.pgid {
			return c.damaged(id, "free page %d outside 2..%d", c.free[i], c.m.pgid-1)
		}
	}
	slices.Sort(c.free)
	for i := 1; i < len(c.free); i++ {
		if c.free[i] == c.free[i-1] {
			return c.damaged(id, "page %d listed free twice", c.free[i])
		}
	}
	return nil
}

// treePage is a B+tree page for the walk to check; root is true for the
// pages of the root bucket, whose leaf elements are all buckets.
type treePage struct {
	id   uint64
	root bool
}

// walk checks the B+tree pages breadth first from the root bucket, within
// checkBudget.
func (c *fileCheck) walk() error {
	c.seen = make(map[uint64]bool)
	queue := []treePage{{id: c.m.root, root: true}}
	for len(queue) > 0 && c.budget > 0 {
		p := queue[0]
		queue = queue[1:]
		if c.seen[p.id] {
			return c.damaged(int64(p.id), "reached twice in the trees")
		}
		c.seen[p.id] = true
		if _, free := slices.BinarySearch(c.free, p.id); free {
			return c.damaged(int64(p.id), "in use and listed free")
		}
		buf, whole, err := c.page(p.id, c.budget, flagBranch, flagLeaf)
		if err != nil || !whole {
			return err // !whole: larger than what is left of the budget
		}
		c.budget -= int64(len(buf))
		next, err := c.elements(buf, int64(p.id), p.root)
		if err != nil {
			return err
		}
		queue = append(queue, next...)
	}
	return nil
}

// elements checks that the elements of a branch or leaf page (or of an
// inline bucket's page) and their keys and values lie within buf, and
// returns the pages they lead to.
func (c *fileCheck) elements(buf []byte, id int64, root bool) ([]treePage, error) {
	flags, count := nativeEndian.Uint16(buf[8:]), uint64(nativeEndian.Uint16(buf[10:]))
	size := uint64(len(buf))
	if pageHeaderSize+count*elementSize > size {
		return nil, c.damaged(id, "%d elements do not fit the page", count)
	}
	var next []treePage
	for i := range count {
		e := pageHeaderSize + i*elementSize
		if flags == flagBranch {
			pos, ksize := uint64(nativeEndian.Uint32(buf[e:])), uint64(nativeEndian.Uint32(buf[e+4:]))
			if e+pos+ksize > size {
				return nil, c.damaged(id, "element %d: key outside the page", i)
			}
			next = append(next, treePage{id: nativeEndian.Uint64(buf[e+8:]), root: root})
			continue
		}
		eflags := nativeEndian.Uint32(buf[e:])
		pos, ksize := uint64(nativeEndian.Uint32(buf[e+4:])), uint64(nativeEndian.Uint32(buf[e+8:]))
		vsize := uint64(nativeEndian.Uint32(buf[e+12:]))
		end := e + pos + ksize + vsize
		if end > size {
			return nil, c.damaged(id, "element %d: key or value outside the page", i)
		}
		if eflags&flagBucket == 0 {
			if root {
				return nil, c.damaged(id, "element %d of the root bucket is not a bucket", i)
			}
			continue
		}
		children, err := c.bucket(buf[e+pos+ksize:end], id, i)
		if err != nil {
			return nil, err
		}
		next = append(next, children...)
	}
	return next, nil
}

// bucket checks the value of a bucket element (element i of page id) and
// returns the pages it leads to: its root page, or those of its inline
// page.
func (c *fileCheck) bucket(value []byte, id int64, i uint64) ([]treePage, error) {
	if len(value) < bucketHdrSize {
		return nil, c.damaged(id, "element %d: bucket value of %d bytes", i, len(value))
	}
	if root := nativeEndian.Uint64(value); root != 0 {
		return []treePage{{id: root}}, nil
	}
	inline := value[bucketHdrSize:]
	if len(inline) < pageHeaderSize || nativeEndian.Uint16(inline[8:]) != flagLeaf {
		return nil, c.damaged(id, "element %d: inline bucket without a leaf page", i)
	}
	return c.elements(inline, id, false)
}
