package natslog

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// record is one stream message as the consumer gets it.
type record struct {
	seq  uint64
	data []byte
}

// reader reads the stream in order into a bounded buffer of contiguous
// sequences, base .. base+len(buf)-1, for Wait and Read. Its goroutine
// starts at the first sequence asked for and is restarted only when asked
// for a sequence outside the buffer.
type reader struct {
	l *Log

	mu      sync.Mutex
	buf     []record
	bytes   int           // of the records in buf
	base    uint64        // sequence of buf[0]; the next one expected when buf is empty
	notify  chan struct{} // closed and replaced when records arrive (and Wait waits) or err is set
	waiting int           // Wait calls blocked on notify
	space   chan struct{} // closed and replaced when the consumer releases records
	err     error         // sticky: ErrPurged or ErrClosed
	cancel  context.CancelFunc
	done    chan struct{} // closed when the goroutine ended; nil before the first start
	stopped bool
}

func newReader(l *Log) *reader {
	return &reader{l: l, notify: make(chan struct{}), space: make(chan struct{})}
}

// next is the sequence the reader reads next. Call with mu held.
func (r *reader) next() uint64 { return r.base + uint64(len(r.buf)) }

// ensure starts the reader at from unless the buffer already covers or
// continues at from; a from outside restarts it there.
func (r *reader) ensure(from uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return ErrClosed
	}
	if r.done != nil && from >= r.base && from <= r.next() {
		return nil
	}
	if r.done != nil {
		// Asked for something else than what follows: start over there.
		r.l.logger.Warn("stream reader restarts", "from", from, "buffered_from", r.base, "buffered_to", r.next()-1)
		cancel, done := r.cancel, r.done
		r.mu.Unlock()
		cancel()
		<-done
		r.mu.Lock()
		if r.stopped {
			return ErrClosed
		}
	} else {
		// The first start: from is the index checkpoint + 1.
		r.l.noteApplied(from - 1)
	}
	clear(r.buf)
	r.buf, r.bytes, r.base, r.err = r.buf[:0], 0, from, nil
	ctx, cancel := context.WithCancel(r.l.ctx)
	r.cancel, r.done = cancel, make(chan struct{})
	go r.run(ctx, r.done)
	return nil
}

// stop ends the goroutine and makes Wait and Read return ErrClosed.
func (r *reader) stop() {
	r.mu.Lock()
	r.stopped = true
	r.setErrLocked(ErrClosed)
	cancel, done := r.cancel, r.done
	r.mu.Unlock()
	if done != nil {
		cancel()
		<-done
	}
}

func (r *reader) setErrLocked(err error) {
	r.err = err
	close(r.notify)
	r.notify = make(chan struct{})
}

// run consumes the stream from the reader's next sequence until ctx ends
// or the records it needs are gone; after any other failure it starts a new
// consumer at the next sequence, with backoff.
func (r *reader) run(ctx context.Context, done chan struct{}) {
	defer close(done)
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		r.mu.Lock()
		from := r.next()
		r.mu.Unlock()
		err := r.consume(ctx, from)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, ErrPurged) {
			r.mu.Lock()
			r.setErrLocked(err)
			r.mu.Unlock()
			r.l.logger.Error("stream reader stopped: records this node needs are gone; restore its index from a peer", "err", err)
			return
		}
		r.l.logger.Warn("stream reader: consumer failed, starting a new one", "from", from, "err", err, "retry_in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// consume reads through one ordered consumer from sequence from.
func (r *reader) consume(ctx context.Context, from uint64) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	cons, err := r.l.js.OrderedConsumer(cctx, r.l.opts.Stream, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   from,
	})
	cancel()
	if err != nil {
		return fmt.Errorf("ordered consumer: %w", err)
	}
	// Idle heartbeats every second: a consumer lost with its server (or
	// created while the stream's replicas were still forming) is noticed
	// after two missed ones and recreated at the next sequence, instead of
	// after the client's default of 2 x 5 s.
	it, err := cons.Messages(jetstream.PullMaxMessagesWithBytesLimit(4096, 32<<20), jetstream.PullHeartbeat(time.Second))
	if err != nil {
		return fmt.Errorf("messages: %w", err)
	}
	defer it.Stop()
	unhook := context.AfterFunc(ctx, it.Stop)
	defer unhook()
	for {
		msg, err := it.Next()
		if err != nil {
			return fmt.Errorf("next: %w", err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("message metadata: %w", err)
		}
		seq := meta.Sequence.Stream
		r.l.noteLast(seq + meta.NumPending)
		if err := r.add(ctx, seq, msg.Data()); err != nil {
			return err
		}
	}
}

// add appends the record at seq, first filling any sequences between the
// last buffered one and seq (see fetchMissing).
func (r *reader) add(ctx context.Context, seq uint64, data []byte) error {
	r.mu.Lock()
	next := r.next()
	r.mu.Unlock()
	if seq < next {
		return nil // read already (the ordered consumer does not redeliver, but be sure)
	}
	if seq > next {
		if err := r.fillGap(ctx, next, seq); err != nil {
			return err
		}
	}
	return r.push(ctx, seq, data)
}

// fillGap pushes the records from..to-1, which the consumer skipped.
func (r *reader) fillGap(ctx context.Context, from, to uint64) error {
	ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
	info, err := r.l.stream.Info(ictx)
	cancel()
	if err != nil {
		return fmt.Errorf("gap %d..%d: stream info: %w", from, to-1, err)
	}
	if from < info.State.FirstSeq {
		return fmt.Errorf("%w: this node needs sequence %d, the stream begins at %d", ErrPurged, from, info.State.FirstSeq)
	}
	r.l.logger.Warn("stream reader: sequences skipped, asking the leader for each", "from", from, "to", to-1)
	for s := from; s < to; s++ {
		data, err := r.fetchMissing(ctx, s)
		if err != nil {
			return err
		}
		if err := r.push(ctx, s, data); err != nil {
			return err
		}
	}
	return nil
}

// fetchMissing asks the stream leader for the message at seq: its data
// when the stream has it, an empty record (which the consumer counts as
// malformed) when it was deleted.
func (r *reader) fetchMissing(ctx context.Context, seq uint64) ([]byte, error) {
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m, err := r.l.stream.GetMsg(gctx, seq)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		r.l.metrics.gaps.Inc()
		r.l.logger.Warn("stream reader: sequence deleted from the stream, handing an empty record", "seq", seq)
		return []byte{}, nil
	case err != nil:
		return nil, fmt.Errorf("get missing sequence %d: %w", seq, err)
	}
	return m.Data, nil
}

// push appends one record, waiting while the buffer is full.
func (r *reader) push(ctx context.Context, seq uint64, data []byte) error {
	r.mu.Lock()
	for len(r.buf) >= r.l.opts.ReadBuffer || (len(r.buf) > 0 && r.bytes+len(data) > r.l.opts.ReadBufferBytes) {
		space := r.space
		r.mu.Unlock()
		select {
		case <-space:
		case <-ctx.Done():
			return ctx.Err()
		}
		r.mu.Lock()
	}
	defer r.mu.Unlock()
	if seq != r.next() {
		return fmt.Errorf("natslog: reader out of step: got %d, want %d", seq, r.next())
	}
	r.buf = append(r.buf, record{seq: seq, data: data})
	r.bytes += len(data)
	r.l.metrics.read.Inc()
	if r.waiting > 0 { // no channel per record while nobody waits
		close(r.notify)
		r.notify = make(chan struct{})
	}
	return nil
}

// releaseLocked drops the buffered records below seq. Call with mu held.
func (r *reader) releaseLocked(seq uint64) {
	if seq <= r.base {
		return
	}
	k := min(int(seq-r.base), len(r.buf))
	for _, rec := range r.buf[:k] {
		r.bytes -= len(rec.data)
	}
	clear(r.buf[:k])
	r.buf = r.buf[k:]
	r.base += uint64(k)
	close(r.space)
	r.space = make(chan struct{})
}

// Wait returns nil as soon as a record after after can be read, ctx.Err()
// when ctx ends first, ErrClosed after Close, and ErrPurged when the stream
// no longer holds what this node needs. The first call starts the reader at
// after+1.
//
// Wait(after) and Read(from) release the buffered records up to after and
// below from: the consumer asks for records once and keeps what it read
// until it is applied. Asking again for a released record (a consumer that
// re-reads after a failure) restarts the reader there, so it costs a new
// consumer on the server, never a wrong record.
func (l *Log) Wait(ctx context.Context, after uint64) error {
	r := l.rd
	if err := r.ensure(after + 1); err != nil {
		return err
	}
	for {
		r.mu.Lock()
		r.releaseLocked(after + 1)
		next, err, ch := r.next(), r.err, r.notify
		if next > after+1 || err != nil {
			r.mu.Unlock()
			if next > after+1 {
				return nil
			}
			return err
		}
		r.waiting++
		r.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
		}
		r.mu.Lock()
		r.waiting--
		r.mu.Unlock()
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// Read calls fn in sequence order for up to limit buffered records from
// from (limit <= 0: all buffered). Records below from are released: the
// consumer reads from its checkpoint + 1. An error from fn stops the read
// and is returned as is.
func (l *Log) Read(from uint64, limit int, fn func(offset uint64, data []byte) error) error {
	r := l.rd
	if err := r.ensure(from); err != nil {
		return err
	}
	r.mu.Lock()
	if r.err != nil && from >= r.next() {
		err := r.err
		r.mu.Unlock()
		return err
	}
	if from < r.base || from > r.next() {
		base, next := r.base, r.next()
		r.mu.Unlock()
		return fmt.Errorf("read from %d (buffered %d to %d): %w", from, base, next-1, ErrOutOfRange)
	}
	r.releaseLocked(from)
	n := len(r.buf)
	if limit > 0 {
		n = min(n, limit)
	}
	recs := make([]record, n)
	copy(recs, r.buf[:n])
	r.mu.Unlock()
	for _, rec := range recs {
		if err := fn(rec.seq, rec.data); err != nil {
			return err
		}
	}
	return nil
}

// TruncateFront tells the log that the records below offset are applied:
// their buffer is released, and offset-1 is the checkpoint this node reports
// for the stream's retention.
func (l *Log) TruncateFront(offset uint64) error {
	if l.closed.Load() {
		return ErrClosed
	}
	r := l.rd
	r.mu.Lock()
	r.releaseLocked(offset)
	r.mu.Unlock()
	if offset > 0 {
		l.noteApplied(offset - 1)
	}
	return nil
}
