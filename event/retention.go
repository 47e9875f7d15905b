package event

import "time"

// Retention bounds the stored events of a topic; the index expires the
// oldest events past a bound. A zero field is no bound.
type Retention struct {
	// Age expires the events applied longer ago than it.
	Age time.Duration
	// Events keeps the newest Events events of the topic.
	Events uint64
}

// RetentionOverride is a topic's own retention setting: a set field
// replaces the default of every topic (a set zero is no bound for this
// topic), a nil one keeps the default.
type RetentionOverride struct {
	Age    *time.Duration
	Events *uint64
}

// IsZero reports whether the override sets nothing (the topic follows the
// default).
func (o RetentionOverride) IsZero() bool { return o.Age == nil && o.Events == nil }

// Apply returns the retention of a topic with this override, whose default
// is def.
func (o RetentionOverride) Apply(def Retention) Retention {
	if o.Age != nil {
		def.Age = *o.Age
	}
	if o.Events != nil {
		def.Events = *o.Events
	}
	return def
}

// TopicRetention is the retention of one topic: its override and the
// bounds in force.
type TopicRetention struct {
	Topic     string
	Override  RetentionOverride
	Effective Retention
}
