package natslog

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/aggregator-dev/aggregator/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestClassify(t *testing.T) {
	api := func(code jetstream.ErrorCode, desc string) error {
		return fmt.Errorf("publish: %w", &jetstream.APIError{ErrorCode: code, Description: desc, Code: 400})
	}
	for _, c := range []struct {
		name string
		err  error
		want event.Kind
		is   error
	}{
		{"stream full (discard new)", api(codeStoreFailed, "maximum bytes exceeded"), event.Overloaded, ErrOverloaded},
		{"too many open batches", api(codeTooManyInflight, "atomic publish too many inflight"), event.Overloaded, ErrOverloaded},
		{"account storage exhausted", api(codeInsufficientStore, "insufficient resources"), event.Overloaded, ErrOverloaded},
		{"store failed otherwise", api(codeStoreFailed, "disk I/O"), event.Unavailable, ErrUnavailable},
		{"batch abandoned by a leader change", api(10176, "atomic publish batch is incomplete"), event.Unavailable, ErrUnavailable},
		{"no responders", nats.ErrNoResponders, event.Unavailable, ErrUnavailable},
		{"client timeout", nats.ErrTimeout, event.Unavailable, ErrUnavailable},
		{"connection closed", nats.ErrConnectionClosed, event.Unavailable, ErrUnavailable},
		{"context deadline", context.DeadlineExceeded, event.Unavailable, context.DeadlineExceeded},
		{"batch over the servers' limit", api(codeBatchTooLarge, "atomic publish batch is too large"), event.Internal, nil},
	} {
		got := classify(c.err)
		if k := event.KindOf(got); k != c.want {
			t.Errorf("%s: kind %v, want %v (%v)", c.name, k, c.want, got)
		}
		if c.is != nil && !errors.Is(got, c.is) {
			t.Errorf("%s: %v does not wrap %v", c.name, got, c.is)
		}
		if !errors.Is(got, c.err) && !errors.Is(c.err, got) {
			t.Errorf("%s: cause lost: %v", c.name, got)
		}
	}
}

func TestValidName(t *testing.T) {
	for s, want := range map[string]bool{"AGGREGATOR": true, "node-1_a": true, "": false, "a.b": false, "a b": false, "a*": false} {
		if validName(s) != want {
			t.Errorf("validName(%q) = %v", s, !want)
		}
	}
}
