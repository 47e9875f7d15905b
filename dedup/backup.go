package dedup

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Backup stream: a consistent snapshot of index.db, framed so that it can
// be checked before it is used.
//
//	magic "AGGIDX\x00\x01" (8 bytes)
//	header length (uint32 big-endian) and header (JSON, BackupHeader)
//	the database file as of one read transaction (BackupHeader.Size bytes)
//	trailer magic "AGGEND\x00\x01" (8 bytes)
//	CRC-32C (Castagnoli, uint32 big-endian) of every byte before the trailer
var (
	backupMagic   = []byte("AGGIDX\x00\x01")
	trailerMagic  = []byte("AGGEND\x00\x01")
	maxHeaderSize = 64 << 10
)

const trailerLen = 12

// ErrBadBackup is returned (wrapped) by ReadBackup and RestoreBackup for a
// stream that is not a complete, intact backup.
var ErrBadBackup = errors.New("dedup: not an intact backup")

// BackupHeader describes a snapshot: the index format, the checkpoint
// (every log record up to it is applied in the snapshot, none after it),
// the last seq, and the size of the database bytes.
type BackupHeader struct {
	Format     uint64    `json:"index_format"`
	Checkpoint uint64    `json:"checkpoint"`
	LastSeq    uint64    `json:"last_seq"`
	Unique     uint64    `json:"unique"`
	Expired    uint64    `json:"expired"`
	Size       int64     `json:"db_bytes"`
	Created    time.Time `json:"created"`
}

// Length returns the length of the whole stream of a snapshot with this
// header.
func (h BackupHeader) Length() int64 {
	b, _ := json.Marshal(h)
	return int64(len(backupMagic)+4+len(b)+trailerLen) + h.Size
}

// Backup writes a consistent snapshot of the index to w, from one bbolt
// read transaction, while Apply and the readers go on. begin, when not
// nil, is called first with the header (before any byte is written: it may
// set HTTP headers, Length() is the stream's length); an error from it ends
// the backup with nothing written.
//
// A read transaction keeps the pages it sees: while it lasts, pages that
// commits free are not reused (the file grows by what is written
// meanwhile), and a commit that must grow the file past its memory map
// waits for it to end (Open maps the file with mmapHeadroom to spare, so
// that takes growth of more than that).
func (s *Store) Backup(w io.Writer, begin func(BackupHeader) error) (BackupHeader, error) {
	var h BackupHeader
	err := s.view(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		h = BackupHeader{Format: formatVersion, Checkpoint: u64(meta.Get(metaCheckpoint)),
			LastSeq: u64(meta.Get(metaUnique)), Unique: u64(meta.Get(metaUnique)),
			Expired: u64(meta.Get(metaExpired)), Size: tx.Size(), Created: s.now().UTC()}
		if begin != nil {
			if err := begin(h); err != nil {
				return err
			}
		}
		hw := &hashWriter{w: w, h: crc32.New(crcTable)}
		if err := writeBackupHeader(hw, h); err != nil {
			return err
		}
		n, err := tx.WriteTo(hw)
		if err != nil {
			return fmt.Errorf("write snapshot: %w", err)
		}
		if n != h.Size {
			return fmt.Errorf("write snapshot: %d bytes written, %d announced", n, h.Size)
		}
		trailer := binary.BigEndian.AppendUint32(bytes.Clone(trailerMagic), hw.h.Sum32())
		if _, err := w.Write(trailer); err != nil {
			return fmt.Errorf("write snapshot: %w", err)
		}
		return nil
	})
	return h, err
}

func writeBackupHeader(w io.Writer, h BackupHeader) error {
	js, err := json.Marshal(h)
	if err != nil {
		return err
	}
	b := append(bytes.Clone(backupMagic), binary.BigEndian.AppendUint32(nil, uint32(len(js)))...)
	if _, err := w.Write(append(b, js...)); err != nil {
		return fmt.Errorf("write snapshot: %w", err)
	}
	return nil
}

// hashWriter writes through to w and hashes what it wrote.
type hashWriter struct {
	w io.Writer
	h hash.Hash32
}

func (hw *hashWriter) Write(p []byte) (int, error) {
	n, err := hw.w.Write(p)
	hw.h.Write(p[:n])
	return n, err
}

// ReadBackup reads a backup stream from r, writes its database bytes to
// dst and checks the framing and the CRC: only when it returns nil is what
// it wrote to dst a whole snapshot. Failures of the stream wrap
// ErrBadBackup.
func ReadBackup(r io.Reader, dst io.Writer) (BackupHeader, error) {
	var h BackupHeader
	crc := crc32.New(crcTable)
	tr := io.TeeReader(r, crc)
	pre := make([]byte, len(backupMagic)+4)
	if _, err := io.ReadFull(tr, pre); err != nil {
		return h, fmt.Errorf("%w: header: %w", ErrBadBackup, err)
	}
	if !bytes.Equal(pre[:len(backupMagic)], backupMagic) {
		return h, fmt.Errorf("%w: not an aggregator index backup (magic %q)", ErrBadBackup, pre[:len(backupMagic)])
	}
	n := binary.BigEndian.Uint32(pre[len(backupMagic):])
	if n > uint32(maxHeaderSize) {
		return h, fmt.Errorf("%w: header of %d bytes", ErrBadBackup, n)
	}
	js := make([]byte, n)
	if _, err := io.ReadFull(tr, js); err != nil {
		return h, fmt.Errorf("%w: header: %w", ErrBadBackup, err)
	}
	if err := json.Unmarshal(js, &h); err != nil || h.Size <= 0 {
		return h, fmt.Errorf("%w: header %q", ErrBadBackup, js)
	}
	if copied, err := io.CopyN(dst, tr, h.Size); err != nil {
		if errors.Is(err, io.EOF) {
			return h, fmt.Errorf("%w: cut short after %d of %d database bytes", ErrBadBackup, copied, h.Size)
		}
		return h, fmt.Errorf("read backup: %w", err)
	}
	sum := crc.Sum32()
	trailer := make([]byte, trailerLen+1)
	if got, err := io.ReadFull(r, trailer); got != trailerLen || (err != nil && !errors.Is(err, io.ErrUnexpectedEOF)) {
		return h, fmt.Errorf("%w: trailer of %d bytes (want %d)", ErrBadBackup, got, trailerLen)
	}
	if !bytes.Equal(trailer[:len(trailerMagic)], trailerMagic) {
		return h, fmt.Errorf("%w: no trailer after the database bytes", ErrBadBackup)
	}
	if want := binary.BigEndian.Uint32(trailer[len(trailerMagic):]); want != sum {
		return h, fmt.Errorf("%w: CRC-32C %08x, the trailer says %08x", ErrBadBackup, sum, want)
	}
	return h, nil
}

// RestoreBackup writes the snapshot read from r to a new index file at
// path (which must not exist), fsyncs it, and checks it before returning:
// the stream (ReadBackup), bbolt's own consistency check of the file
// (Tx.Check), the format, and that its checkpoint is the header's. On any
// failure it removes the file.
func RestoreBackup(r io.Reader, path string) (h BackupHeader, err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return h, fmt.Errorf("restore: %w", err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(path)
		}
	}()
	h, err = ReadBackup(r, f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return h, fmt.Errorf("restore: %w", err)
	}
	if h.Format != formatVersion {
		return h, fmt.Errorf("restore: %w: a snapshot of index format %d", ErrFormat, h.Format)
	}
	if err := CheckFile(path); err != nil {
		return h, fmt.Errorf("restore: %w", err)
	}
	s, err := Open(path, &Options{ReadOnly: true})
	if err != nil {
		return h, fmt.Errorf("restore: %w", err)
	}
	defer s.Close()
	if err := s.db.View(func(tx *bolt.Tx) error { return boltCheck(tx, 10) }); err != nil {
		return h, fmt.Errorf("restore: %w", err)
	}
	if cp := s.Checkpoint(); cp != h.Checkpoint {
		return h, fmt.Errorf("restore: %w: the file's checkpoint %d is not the header's %d", ErrBadBackup, cp, h.Checkpoint)
	}
	return h, nil
}

// boltCheck runs bbolt's consistency check (every page reachable once,
// freelist, key order) in tx and returns up to max of its findings.
func boltCheck(tx *bolt.Tx, max int) error {
	var errs []error
	n := 0
	for err := range tx.Check() {
		if n++; len(errs) < max {
			errs = append(errs, err)
		}
	}
	if n == 0 {
		return nil
	}
	if n > len(errs) {
		errs = append(errs, fmt.Errorf("and %d more", n-len(errs)))
	}
	return fmt.Errorf("%w: bbolt check: %w", ErrDamaged, errors.Join(errs...))
}
