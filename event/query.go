package event

import "errors"

// Stored is a unique event as the index keeps it: the event and the log
// offset it was read from (its identity in the log).
type Stored struct {
	Event
	Offset uint64 `json:"offset"`
}

// ListQuery selects one page of stored events. Topic "" means every topic.
// Cursor is the opaque NextCursor of the previous page ("" for the first).
type ListQuery struct {
	Topic  string
	Cursor string
	Limit  int
}

// Page is one page of stored events. NextCursor is "" when there are no more.
type Page struct {
	Events     []Stored
	NextCursor string
}

// ErrBadCursor is returned when a ListQuery's Cursor was not made by the
// index for the same query.
var ErrBadCursor = errors.New("event: bad cursor")
