package event

// Stored is a unique event as the index keeps it: the event, its seq (its
// identity among the unique events: 1, 2, 3, ... in the order they were
// applied, with no gaps) and the log offset it was read from.
type Stored struct {
	Event
	Seq    uint64 `json:"seq"`
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

// FeedQuery selects events in seq order: those with a seq above After, of
// Topic only when it is set, at most Limit (<= 0: DefaultListLimit, capped at
// MaxListLimit).
type FeedQuery struct {
	Topic string
	After uint64
	Limit int
}

// Verdict is what the index made of one log record.
type Verdict struct {
	Offset    uint64
	Seq       uint64 // the event's seq if new, the seq of the event it duplicates if not; 0 if malformed
	Duplicate bool
}

// TopicCount is a topic and its lifetime count of unique events.
type TopicCount struct {
	Topic string
	Count uint64
}

// Cursor is a named, durable position in the feed, for consumers with no
// storage of their own: the last seq they acknowledged, of one topic or of
// all. Pending is how many events (of the topic) have a seq after Acked.
type Cursor struct {
	Name    string
	Topic   string
	Acked   uint64
	Pending uint64
}
