package natslog

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/aggregator-dev/aggregator/event"
	"github.com/nats-io/nats.go/jetstream"
)

var (
	// ErrClosed is returned (wrapped) by every method once Close was called.
	ErrClosed = fmt.Errorf("natslog: closed: %w", event.ErrUnavailable)

	// ErrUnavailable is returned (wrapped, with the cause) by Append when
	// the cluster cannot take the request now: no connection, no stream
	// leader, a timeout, a batch abandoned by a leader change. Nothing of a
	// batch that got this error is known to be stored, but it may be
	// (a timeout does not mean "not stored"); retrying is safe because the
	// index deduplicates. Writable reports it too.
	ErrUnavailable = fmt.Errorf("natslog: stream unavailable: %w", event.ErrUnavailable)

	// ErrOverloaded is returned (wrapped) by Append when the stream refuses
	// more: it holds Options.MaxBytes (discard-new), or too many atomic
	// batches are open on the stream. Nothing of that batch was stored.
	ErrOverloaded = fmt.Errorf("natslog: stream refuses more: %w", event.ErrOverloaded)

	// ErrPurged is returned (wrapped) by Wait and Read when the stream no
	// longer holds records this node has not applied (purged by hand, or
	// after this node's checkpoint entry was removed): the node must be
	// restored from a peer's index.
	ErrPurged = fmt.Errorf("natslog: stream purged past the checkpoint: %w", event.ErrUnavailable)

	// ErrOutOfRange is returned (wrapped) by Read for a from that is not
	// buffered: below what the consumer already released, or past the end.
	ErrOutOfRange = errors.New("natslog: offset out of range")
)

// JetStream error codes (nats-server errors.json) that Append tells apart.
const (
	codeStoreFailed       jetstream.ErrorCode = 10077 // JSStreamStoreFailedF: "maximum bytes exceeded" with discard-new
	codeBatchTooLarge     jetstream.ErrorCode = 10199 // more messages than jetstream.limits.batch.max_msgs
	codeTooManyInflight   jetstream.ErrorCode = 10210 // more open atomic batches than the stream or server allows
	codeInsufficientStore jetstream.ErrorCode = 10023 // JetStream resources exceeded
)

// classify gives a publish error its kind: overloaded (429), unavailable
// (503), or as is (a misconfiguration, 500).
func classify(err error) error {
	if err == nil {
		return nil
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case codeStoreFailed, codeTooManyInflight, codeInsufficientStore:
			if apiErr.ErrorCode != codeStoreFailed || isLimit(apiErr.Description) {
				return fmt.Errorf("%w: %w", ErrOverloaded, err)
			}
		case codeBatchTooLarge:
			return fmt.Errorf("batch larger than the servers' jetstream.limits.batch.max_msgs: "+
				"lower --nats-max-batch or raise max_msgs: %w", err)
		}
		// Any other refusal by JetStream (no leader, stream not found,
		// batch incomplete after a leader change, ...): retry later.
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		// The caller's context, or the publish timeout: the outcome is
		// unknown, event.KindOf makes it a 503.
		return err
	}
	// No connection, no responders (no stream leader), a timeout of the
	// client library: retry later.
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

func isLimit(desc string) bool {
	return strings.Contains(desc, "maximum bytes exceeded") || strings.Contains(desc, "maximum messages exceeded")
}
