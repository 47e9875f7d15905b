package dedup

import (
	"context"
	"sync"
)

// notifier wakes the goroutines waiting for the next commit: each waiter
// holds the current channel, which bump closes and replaces. Nobody polls
// and no goroutine is started per waiter.
type notifier struct {
	mu     sync.Mutex
	ch     chan struct{}
	closed bool
}

func (n *notifier) init() { n.ch = make(chan struct{}) }

// wait returns the channel that the next bump (or close) closes, and false
// once the notifier is closed.
func (n *notifier) wait() (<-chan struct{}, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.ch, !n.closed
}

// bump wakes every waiter.
func (n *notifier) bump() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	close(n.ch)
	n.ch = make(chan struct{})
}

// close wakes every waiter for the last time.
func (n *notifier) close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.closed {
		n.closed = true
		close(n.ch)
	}
}

// waitUntil blocks until cond holds (checked after each bump), ctx ends
// (ctx.Err()) or the notifier is closed (ErrClosed).
func (n *notifier) waitUntil(ctx context.Context, cond func() bool) error {
	for {
		ch, open := n.wait()
		if cond() {
			return nil
		}
		if !open {
			return ErrClosed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// LastSeq returns the seq of the last unique event applied (0 for none).
func (s *Store) LastSeq() uint64 { return s.lastSeq.Load() }

// WaitSeq returns nil as soon as an event with a seq above after is applied,
// ctx.Err() when ctx ends first, and ErrClosed once the store is closed. It
// is woken by the commits, it does not poll.
func (s *Store) WaitSeq(ctx context.Context, after uint64) error {
	return s.applied.waitUntil(ctx, func() bool { return s.lastSeq.Load() > after })
}

// WaitCheckpoint returns nil as soon as the log offset is applied (the
// checkpoint reached it), ctx.Err() when ctx ends first, and ErrClosed once
// the store is closed. While it waits, the consumer does not pace its
// transactions (ConsumerOptions.ChunkDelay): a caller is waiting for the
// next one.
func (s *Store) WaitCheckpoint(ctx context.Context, offset uint64) error {
	if s.checkpoint.Load() >= offset {
		return nil
	}
	s.urgency.enter()
	defer s.urgency.leave()
	return s.applied.waitUntil(ctx, func() bool { return s.checkpoint.Load() >= offset })
}

// urgency counts the callers waiting for an apply and holds the cancel of
// the consumer's pacing wait, if it is in one, which a new caller ends.
type urgency struct {
	mu      sync.Mutex
	waiters int
	cancel  context.CancelFunc
}

func (u *urgency) enter() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.waiters++
	if u.cancel != nil {
		u.cancel()
	}
}

func (u *urgency) leave() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.waiters--
}

// pace registers the cancel of a pacing wait; false (and nothing
// registered) when a caller is waiting already, so there is no pacing.
func (u *urgency) pace(cancel context.CancelFunc) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.waiters > 0 {
		return false
	}
	u.cancel = cancel
	return true
}

func (u *urgency) done() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.cancel = nil
}

// Changed returns a channel closed at the next commit, for callers that wait
// on more than one thing; it is already closed when the store is.
func (s *Store) Changed() <-chan struct{} {
	ch, _ := s.applied.wait()
	return ch
}
