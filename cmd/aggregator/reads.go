package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/aggregator-dev/aggregator/dedup"
	"github.com/aggregator-dev/aggregator/event"
)

// The reading half of the backend: everything served from the index.

// indexErr marks a closed index as event.ErrUnavailable (503, retry).
func indexErr(op string, err error) error {
	if errors.Is(err, dedup.ErrClosed) {
		return fmt.Errorf("%s: %w: %w", op, event.ErrUnavailable, err)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

// List reads a page from the index in time order.
func (b *backend) List(_ context.Context, q event.ListQuery, take func(*event.Stored) bool) (string, error) {
	s, err := b.index()
	if err != nil {
		return "", err
	}
	next, err := s.ListFunc(q, take)
	return next, indexErr("list", err)
}

// Feed reads events in seq order from the index.
func (b *backend) Feed(_ context.Context, q event.FeedQuery, take func(*event.Stored) bool) (uint64, error) {
	s, err := b.index()
	if err != nil {
		return q.After, err
	}
	last, err := s.Feed(q, take)
	return last, indexErr("feed", err)
}

// Changed returns the channel the index's next commit closes.
func (b *backend) Changed(context.Context) (<-chan struct{}, error) {
	s, err := b.index()
	if err != nil {
		return nil, err
	}
	return s.Changed(), nil
}

// WaitApplied waits until the consumer applied the log offset.
func (b *backend) WaitApplied(ctx context.Context, offset uint64) error {
	s, err := b.index()
	if err != nil {
		return err
	}
	return indexErr("wait for apply", s.WaitCheckpoint(ctx, offset))
}

// Verdicts says what the index made of applied records.
func (b *backend) Verdicts(_ context.Context, first, last uint64, events []event.Event) ([]event.Verdict, error) {
	s, err := b.index()
	if err != nil {
		return nil, err
	}
	v, err := s.Verdicts(first, last, events)
	return v, indexErr("verdicts", err)
}

// Topics lists topics with their counts.
func (b *backend) Topics(_ context.Context, after string, limit int) ([]event.TopicCount, bool, error) {
	s, err := b.index()
	if err != nil {
		return nil, false, err
	}
	t, more, err := s.Topics(after, limit)
	return t, more, indexErr("topics", err)
}

// PutCursor creates a named cursor, at most limits.maxCursors of them.
func (b *backend) PutCursor(_ context.Context, name, topic string) (event.Cursor, bool, error) {
	s, err := b.index()
	if err != nil {
		return event.Cursor{}, false, err
	}
	c, created, err := s.PutCursor(name, topic, b.limits.maxCursors)
	return c, created, indexErr("put consumer", err)
}

// GetCursor reads a named cursor.
func (b *backend) GetCursor(_ context.Context, name string) (event.Cursor, error) {
	s, err := b.index()
	if err != nil {
		return event.Cursor{}, err
	}
	c, err := s.GetCursor(name)
	return c, indexErr("get consumer", err)
}

// AckCursor moves a named cursor forward.
func (b *backend) AckCursor(_ context.Context, name string, seq uint64) (event.Cursor, error) {
	s, err := b.index()
	if err != nil {
		return event.Cursor{}, err
	}
	c, err := s.AckCursor(name, seq)
	return c, indexErr("ack consumer", err)
}

// DeleteCursor removes a named cursor.
func (b *backend) DeleteCursor(_ context.Context, name string) error {
	s, err := b.index()
	if err != nil {
		return err
	}
	return indexErr("delete consumer", s.DeleteCursor(name))
}
