package natslog

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/synadia-io/orbit.go/jetstreamext"
)

// Append publishes records and returns the stream sequences of the first
// and the last, once JetStream acknowledged every one of them: one atomic
// batch per Options.MaxBatch records (one plain publish for a single
// record), so each batch is stored whole or not at all at consecutive
// sequences. Up to MaxBatch records the sequences first..last are exactly
// the request's; a longer request is split in request order, other
// publishers' batches may land between its batches, and first..last then
// spans them too.
//
// On error nothing is acknowledged. A failed batch stored nothing if the
// server said so (ErrOverloaded, most of ErrUnavailable), but after a
// timeout or a lost connection it may have been stored, and batches of the
// same request acknowledged before the failing one stay stored. Records
// are the callers'; Append does not keep them.
func (l *Log) Append(ctx context.Context, records [][]byte) (first, last uint64, err error) {
	if len(records) == 0 {
		return 0, 0, nil
	}
	if l.closed.Load() {
		return 0, 0, ErrClosed
	}
	for start := 0; start < len(records); start += l.opts.MaxBatch {
		chunk := records[start:min(start+l.opts.MaxBatch, len(records))]
		f, la, err := l.publish(ctx, chunk)
		if err != nil {
			if start > 0 {
				err = fmt.Errorf("after %d of %d records were stored: %w", start, len(records), err)
			}
			return 0, 0, err
		}
		if start == 0 {
			first = f
		}
		last = la
	}
	return first, last, nil
}

// publish sends one batch and returns its sequences.
func (l *Log) publish(ctx context.Context, records [][]byte) (first, last uint64, err error) {
	ctx, cancel := context.WithTimeout(ctx, l.opts.PublishTimeout)
	defer cancel()
	start := time.Now()
	defer func() { l.metrics.published(len(records), time.Since(start), err) }()
	if len(records) == 1 {
		ack, err := l.js.PublishMsg(ctx, &nats.Msg{Subject: l.subject, Data: records[0]})
		if err != nil {
			return 0, 0, classify(err)
		}
		l.noteLast(ack.Sequence)
		return ack.Sequence, ack.Sequence, nil
	}
	// An open atomic batch takes one of the stream's in-flight slots on
	// the leader (50 by default); bound ours.
	select {
	case l.batches <- struct{}{}:
	case <-ctx.Done():
		return 0, 0, fmt.Errorf("%w: waiting for a batch slot: %w", ErrOverloaded, ctx.Err())
	}
	defer func() { <-l.batches }()
	msgs := make([]*nats.Msg, len(records))
	for i, r := range records {
		msgs[i] = &nats.Msg{Subject: l.subject, Data: r, Header: make(nats.Header, 3)}
	}
	// No flow-control acks: the messages of a batch go out back to back on
	// the one connection and the commit's reply tells the outcome. (Open
	// checked that the stream allows atomic batches, which the first
	// message's ack would otherwise report early.)
	ack, err := jetstreamext.PublishMsgBatch(ctx, l.js, msgs,
		jetstreamext.BatchFlowControl{AckFirst: false, AckTimeout: l.opts.PublishTimeout})
	if err != nil {
		return 0, 0, classify(err)
	}
	if ack.BatchSize != uint64(len(records)) || ack.Sequence < ack.BatchSize {
		return 0, 0, fmt.Errorf("natslog: batch ack for %d messages at sequence %d, sent %d", ack.BatchSize, ack.Sequence, len(records))
	}
	l.noteLast(ack.Sequence)
	return ack.Sequence - ack.BatchSize + 1, ack.Sequence, nil
}
