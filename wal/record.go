package wal

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
)

// Record frame, stored as the data of one tidwall/wal entry (which adds its
// own uvarint length prefix in front):
//
//	byte 0      version (recordVersion)
//	byte 1      flags (flagBatchStart: first record of a group commit)
//	bytes 2-9   offset, uint64 little endian
//	bytes 10-13 CRC-32C (Castagnoli) of bytes 0-9 followed by the body
//	bytes 14-   body (the caller's record)
//
// The offset makes every record self-describing, so a record that lands at
// the wrong position (a lost or renamed segment) fails its check, and the
// torn-tail analysis at Open can recognise intact records after a damaged one.
const (
	recordVersion  = 1
	flagBatchStart = 1 << 0
	knownFlags     = flagBatchStart
	headerSize     = 14
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Reasons a record fails its check; wrapped by CorruptionError.
var (
	errShortRecord  = errors.New("record shorter than its header")
	errBadVersion   = errors.New("unknown record version or flags")
	errBadChecksum  = errors.New("checksum mismatch")
	errBadOffset    = errors.New("record offset does not match its position")
	errTruncated    = errors.New("record runs past the end of the segment")
	errBadLength    = errors.New("unreadable length prefix")
	errSegmentCount = errors.New("segment does not end where the next one begins")
)

// appendFrame appends the frame of body at offset to dst.
func appendFrame(dst []byte, offset uint64, flags byte, body []byte) []byte {
	start := len(dst)
	dst = append(dst, recordVersion, flags)
	dst = binary.LittleEndian.AppendUint64(dst, offset)
	crc := crc32.Update(0, castagnoli, dst[start:start+10])
	crc = crc32.Update(crc, castagnoli, body)
	dst = binary.LittleEndian.AppendUint32(dst, crc)
	return append(dst, body...)
}

// frameHeader is the decoded header of a record frame.
type frameHeader struct {
	flags  byte
	offset uint64
}

// decodeFrame checks one record frame and returns its header and body. The
// body aliases frame.
func decodeFrame(frame []byte) (frameHeader, []byte, error) {
	if len(frame) < headerSize {
		return frameHeader{}, nil, errShortRecord
	}
	if frame[0] != recordVersion || frame[1]&^knownFlags != 0 {
		return frameHeader{}, nil, errBadVersion
	}
	h := frameHeader{flags: frame[1], offset: binary.LittleEndian.Uint64(frame[2:10])}
	body := frame[headerSize:]
	crc := crc32.Update(0, castagnoli, frame[:10])
	crc = crc32.Update(crc, castagnoli, body)
	if crc != binary.LittleEndian.Uint32(frame[10:14]) {
		return frameHeader{}, nil, errBadChecksum
	}
	return h, body, nil
}

// decodeRecord checks the entry at the start of buf, which must hold
// the record with the given offset, and returns its body (aliasing buf), the
// entry's length in bytes and its header flags.
func decodeRecord(buf []byte, offset uint64) (body []byte, n int, flags byte, err error) {
	data, n, err := nextEntry(buf)
	if err != nil {
		return nil, 0, 0, err
	}
	h, body, err := decodeFrame(data)
	if err != nil {
		return nil, 0, 0, err
	}
	if h.offset != offset {
		return nil, 0, 0, errBadOffset
	}
	return body, n, h.flags, nil
}
