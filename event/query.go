package event

// Stored is a unique event as the index keeps it: the event and the log
// offset it was read from (its identity in the log).
type Stored struct {
	Event
	Offset uint64 `json:"offset"`
}

// Bounds of a ListQuery, owned here for the API and the index alike.
const (
	// DefaultListLimit is the page size when ListQuery.Limit <= 0.
	DefaultListLimit = 1000
	// MaxListLimit caps ListQuery.Limit.
	MaxListLimit = 10_000
	// MaxCursorBytes bounds ListQuery.Cursor; the index's cursors are shorter.
	MaxCursorBytes = 1024
)

// MaxFieldBytes bounds topic, event_id and source.
const MaxFieldBytes = 255

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
