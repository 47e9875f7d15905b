package api

import (
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/aggregator-dev/aggregator/event"
	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zlib"
	"github.com/klauspost/compress/zstd"
)

// This file reads a request body: the content coding (gzip, deflate, zstd)
// is decoded while reading, the size limit holds for the body as sent and for
// the decoded body, and the buffer grows only with the bytes that arrive,
// each growth charged to a budget shared by every request in flight.

// minBodyBuffer is the first size of a body buffer that has none.
const minBodyBuffer = 4 << 10

// zstdMaxWindow bounds the window (the decoder's history) of a zstd frame:
// 8 MiB, what the format's specification asks every decoder to support. A
// frame that needs more is refused as corrupt.
const zstdMaxWindow = 8 << 20

// acceptedEncodings is the Accept-Encoding of a 415 reply.
const acceptedEncodings = "gzip, deflate, zstd"

// bodyBudget bounds the bytes of body buffers that requests hold at once.
type bodyBudget struct {
	limit int64
	used  atomic.Int64
}

// take reserves n bytes, or reports false (reserving nothing) when that
// would pass the limit.
func (bb *bodyBudget) take(n int64) bool {
	if bb.used.Add(n) > bb.limit {
		bb.used.Add(-n)
		return false
	}
	return true
}

func (bb *bodyBudget) give(n int64) { bb.used.Add(-n) }

// rawBody reads the body as sent, at most limit bytes of it, and keeps the
// error the client's connection returned, so that a decoder's error can be
// told from the transport's.
type rawBody struct {
	r     io.Reader
	n     int64 // bytes read
	limit int64
	err   error // the last error of r, io.EOF included
}

// errRawTooLarge is the error of a body sent larger than the limit.
var errRawTooLarge = errors.New("body as sent is over the limit")

func (rb *rawBody) Read(p []byte) (int, error) {
	if rb.n > rb.limit {
		return 0, errRawTooLarge
	}
	if int64(len(p)) > rb.limit+1-rb.n {
		p = p[:rb.limit+1-rb.n]
	}
	n, err := rb.r.Read(p)
	rb.n += int64(n)
	if err != nil {
		rb.err = err
	}
	if rb.n > rb.limit {
		return n, errRawTooLarge
	}
	return n, err
}

// coding is a content coding the service decodes.
type coding uint8

const (
	identity coding = iota
	codingGzip
	codingDeflate
	codingZstd
)

func (c coding) String() string {
	return [...]string{"identity", "gzip", "deflate", "zstd"}[c]
}

// contentCoding parses Content-Encoding: one coding (identity, gzip or
// x-gzip, deflate, zstd; case-insensitive), or none. Anything else is of kind
// event.UnsupportedMediaType.
func contentCoding(header []string) (coding, error) {
	c := identity
	for _, v := range header {
		for part := range strings.SplitSeq(v, ",") {
			var next coding
			switch name := strings.ToLower(strings.TrimSpace(part)); name {
			case "", "identity":
				continue
			case "gzip", "x-gzip":
				next = codingGzip
			case "deflate":
				next = codingDeflate
			case "zstd":
				next = codingZstd
			default:
				return identity, event.Errorf(event.UnsupportedMediaType,
					"unsupported Content-Encoding %q: use gzip, deflate, zstd or none", truncate(name, 32))
			}
			if c != identity {
				return identity, event.Errorf(event.UnsupportedMediaType,
					"more than one Content-Encoding: send the body in one coding (gzip, deflate or zstd)")
			}
			c = next
		}
	}
	return c, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// decoders are pooled decoders of each coding.
type decoders struct {
	gzip, zlib, flate, zstd sync.Pool
}

// open returns a reader of the decoded body and a function that gives the
// decoder back; the error is the decoder's (a bad header) or rb's.
func (d *decoders) open(c coding, rb *rawBody) (io.Reader, func(), error) {
	switch c {
	case codingGzip:
		zr, _ := d.gzip.Get().(*gzip.Reader)
		if zr == nil {
			zr = new(gzip.Reader)
		}
		if err := zr.Reset(rb); err != nil {
			d.gzip.Put(zr)
			return nil, nil, err
		}
		return zr, func() { d.gzip.Put(zr) }, nil
	case codingDeflate:
		return d.openDeflate(rb)
	case codingZstd:
		zr, _ := d.zstd.Get().(*zstd.Decoder)
		if zr == nil {
			var err error
			zr, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
				zstd.WithDecoderMaxWindow(zstdMaxWindow))
			if err != nil {
				return nil, nil, err
			}
		}
		if err := zr.Reset(rb); err != nil {
			return nil, nil, err
		}
		return zr, func() { _ = zr.Reset(nil); d.zstd.Put(zr) }, nil
	default:
		return rb, func() {}, nil
	}
}

// openDeflate decodes "deflate": zlib (RFC 1950) as RFC 9110 says, or a raw
// deflate stream (RFC 1951) when the zlib header is absent, as some clients
// send it.
func (d *decoders) openDeflate(rb *rawBody) (io.Reader, func(), error) {
	var hdr [2]byte
	n, err := io.ReadFull(rb, hdr[:])
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, nil, err
	}
	src := io.MultiReader(strings.NewReader(string(hdr[:n])), rb)
	if n == 2 && isZlibHeader(hdr[0], hdr[1]) {
		if zr, _ := d.zlib.Get().(io.ReadCloser); zr != nil {
			if err := zr.(zlib.Resetter).Reset(src, nil); err != nil {
				return nil, nil, err
			}
			return zr, func() { d.zlib.Put(zr) }, nil
		}
		zr, err := zlib.NewReader(src)
		if err != nil {
			return nil, nil, err
		}
		return zr, func() { d.zlib.Put(zr) }, nil
	}
	fr, _ := d.flate.Get().(io.ReadCloser)
	if fr == nil {
		fr = flate.NewReader(src)
	} else if err := fr.(flate.Resetter).Reset(src, nil); err != nil {
		return nil, nil, err
	}
	return fr, func() { d.flate.Put(fr) }, nil
}

// isZlibHeader reports whether cmf and flg start a zlib stream: deflate with
// a window of at most 32 KiB, and the header's check bits.
func isZlibHeader(cmf, flg byte) bool {
	return cmf&0x0f == 8 && cmf>>4 <= 7 && (uint16(cmf)<<8|uint16(flg))%31 == 0
}

// readBody reads the decoded request body into b.body, within the size
// limit and the body budget.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request, b *batch) error {
	limit := h.opts.MaxBodyBytes
	if r.ContentLength > limit {
		return tooLarge(w, limit)
	}
	c, err := contentCoding(r.Header.Values("Content-Encoding"))
	if err != nil {
		w.Header().Set("Accept-Encoding", acceptedEncodings)
		w.Header().Set("Connection", "close") // the body is not read
		return err
	}
	b.raw = rawBody{r: r.Body, limit: limit}
	src, done, err := h.decoders.open(c, &b.raw)
	if err == nil {
		err = h.fill(b, src, r.ContentLength)
		done()
	}
	raw := b.raw
	b.raw = rawBody{} // no reference to the request is kept in the pool
	if err == nil {
		return nil
	}
	return h.bodyError(w, c, &raw, err)
}

func tooLarge(w http.ResponseWriter, limit int64) error {
	// The rest of the body is not read: close the connection after the
	// reply rather than drain it.
	w.Header().Set("Connection", "close")
	return event.Errorf(event.TooLarge, "body is larger than %d bytes", limit)
}

// errBodyBudget is the refusal of a body that would pass the budget.
var errBodyBudget = errors.New("budget of body bytes in flight exhausted")

// bodyError turns a failed read into the client's error: 413 over a limit,
// 429 when the budget is exhausted, 408 for a body that came too slowly,
// 400 for a broken connection or corrupt compressed data.
func (h *Handler) bodyError(w http.ResponseWriter, c coding, rb *rawBody, err error) error {
	b := h.opts.MaxBodyBytes
	var ne net.Error
	switch {
	case errors.Is(err, errRawTooLarge), errors.Is(err, errDecodedTooLarge):
		return tooLarge(w, b)
	case errors.Is(err, errBodyBudget):
		w.Header().Set("Connection", "close")
		return event.Errorf(event.Overloaded, "request bodies in flight hold %d bytes already: retry later", h.budget.limit)
	case rb.err != nil && !errors.Is(rb.err, io.EOF) && errors.As(rb.err, &ne) && ne.Timeout():
		// The server's read timeout cut a slow sender: 408, which clients
		// retry, and the connection closes.
		w.Header().Set("Connection", "close")
		return event.Errorf(event.Timeout, "body not received in time")
	case rb.err != nil && !errors.Is(rb.err, io.EOF):
		return badRequest("read body: " + rb.err.Error())
	case c != identity && rb.n == 0:
		return badRequest("empty body")
	default:
		return badRequest("corrupt " + c.String() + " body: " + err.Error())
	}
}

// errDecodedTooLarge is the error of a decoded body over the limit.
var errDecodedTooLarge = errors.New("decoded body is over the limit")

// fill reads src into b.body. The buffer grows when it is full, to twice its
// size (or to the announced length), never past the limit and one byte;
// every growth is charged to the body budget first.
func (h *Handler) fill(b *batch, src io.Reader, announced int64) error {
	limit := h.opts.MaxBodyBytes
	buf := b.body[:0]
	if c := int64(cap(buf)); c > 0 && !h.takeBudget(b, c) {
		buf = nil // a pooled buffer the budget cannot cover: start small
	}
	for {
		if len(buf) == cap(buf) {
			size := max(minBodyBuffer, 2*len(buf))
			if announced > int64(len(buf)) && announced < int64(size) {
				size = int(announced) + 1 // one more byte, to see EOF without growing
			}
			size = int(min(int64(size), limit+1))
			if !h.takeBudget(b, int64(size-cap(buf))) {
				b.body = buf[:0]
				return errBodyBudget
			}
			buf = slices.Grow(buf, size-len(buf))
			// The allocator may round up: charge that too. (The old array,
			// if any, is garbage now: b holds cap(buf) bytes.)
			h.charge(b, int64(cap(buf)-size))
		}
		n, err := src.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > limit {
			b.body = buf[:0]
			return errDecodedTooLarge
		}
		if errors.Is(err, io.EOF) {
			b.body = buf
			return nil
		}
		if err != nil {
			b.body = buf[:0]
			return err
		}
	}
}

// takeBudget charges n bytes to the body budget for b; false when the budget has
// no room.
func (h *Handler) takeBudget(b *batch, n int64) bool {
	if n <= 0 {
		return true
	}
	if !h.budget.take(n) {
		return false
	}
	b.charged += n
	h.metrics.bodyBytes.Add(float64(n))
	return true
}

// charge is takeBudget without a refusal, for the allocator's rounding.
func (h *Handler) charge(b *batch, n int64) {
	if n <= 0 {
		return
	}
	h.budget.used.Add(n)
	b.charged += n
	h.metrics.bodyBytes.Add(float64(n))
}

// giveBudget gives n of b's bytes back to the budget.
func (h *Handler) giveBudget(b *batch, n int64) {
	n = min(n, b.charged)
	if n <= 0 {
		return
	}
	h.budget.give(n)
	b.charged -= n
	h.metrics.bodyBytes.Sub(float64(n))
}

// bodyFormat is how a body is split into events.
type bodyFormat uint8

const (
	formatJSON   bodyFormat = iota // one object or an array of objects
	formatNDJSON                   // one object per line
	formatSniff                    // JSON, or NDJSON when it looks like it
)

// formatOf returns the format a Content-Type announces: JSON for
// application/json and +json types, NDJSON for the NDJSON and JSON Lines
// types, and sniffing for any other type or none. multipart is refused.
func formatOf(contentType string) (bodyFormat, error) {
	mt, _, _ := strings.Cut(contentType, ";")
	mt = strings.ToLower(strings.TrimSpace(mt))
	switch {
	case mt == "application/json" || strings.HasSuffix(mt, "+json"):
		return formatJSON, nil
	case isNDJSON(mt):
		return formatNDJSON, nil
	case strings.HasPrefix(mt, "multipart/"):
		return formatJSON, badRequest("multipart bodies are not supported: send one JSON array or NDJSON " +
			"(Benthos: batch_as_multipart: false with archive: json_array or lines)")
	default:
		return formatSniff, nil
	}
}

// isNDJSON reports whether the media type (lower case, no parameters)
// announces one event per line.
func isNDJSON(mt string) bool {
	switch mt {
	case "application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonl",
		"application/jsonlines", "application/x-jsonlines":
		return true
	}
	return false
}
