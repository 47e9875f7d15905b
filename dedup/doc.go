// Package dedup turns the write-ahead log into the set of unique events,
// exactly once per (topic, event_id).
//
// # Storage
//
// One bbolt database (index.db in the data directory) holds everything the
// consumer produces (format 3, see store.go):
//
//   - seen and runs: the authoritative set of (topic, event_id) keys, kept
//     as a few sorted runs of key blocks (see below), each key with the seq
//     of the event first stored with it, and each run's size and span of
//     apply times;
//   - events: every stored unique event keyed by its seq (1, 2, 3, ... in
//     apply order, dense, never reused), with its log offset and apply
//     time; byseq/<topic> (seq to the event's ordinal in its topic) and
//     bytime/<topic> ((timestamp, offset) to seq) index them per topic;
//   - topics: the lifetime count of unique events per topic;
//   - consumers: the named cursors; retention: the topics' own retention;
//   - meta: the checkpoint (last applied log offset), the lifetime counters
//     (unique, duplicates, malformed, expired, forgotten) and the format
//     version.
//
// # Lifecycle
//
// Retention (Options.Retention, SetRetention) expires the oldest stored
// events of a topic by count or by apply time: they leave the events and
// the topic's indexes, their keys stay in the seen set, so a late resend is
// still a duplicate. The dedup window (Options.DedupWindow) forgets keys
// older than it by dropping whole runs of the seen set. Both run in
// maintenance steps bounded in size, inside each Apply transaction and in
// Maintain while the consumer is idle (retention.go, window.go). Stored ==
// Unique - Expired, and the stored seqs are Unique - Expired of 1..Unique.
//
// # Offline and online tools
//
// Backup streams a consistent snapshot of the database from one read
// transaction while Apply goes on; RestoreBackup checks one and writes a
// new index file from it. CheckIndex checks an index file offline, beyond
// bbolt's own check, and Upgrade converts an index of format 2 (the
// previous release) into this format.
//
// # Exactly-once effects
//
// The log delivers every acknowledged record at least once: after a crash the
// consumer reads again from a checkpoint, so it may see records it had
// already applied. Apply makes each chunk's effects idempotent by changing the
// seen set, the stored events, the counters and the checkpoint in one bbolt
// transaction. bbolt commits a transaction atomically (data pages first, then
// a single meta page that switches to the new tree, each followed by
// fdatasync), so after a crash at any instant the database holds either
// all of a chunk's effects together with the checkpoint that covers them, or
// none of them and the old checkpoint. The consumer resumes at checkpoint+1,
// so a record is applied again only when its earlier application was rolled
// back with it. Entries at or below the checkpoint are ignored by Apply, and a
// key already in the seen set is counted as a duplicate, never stored again.
// Hence every record changes the state exactly once: Unique + Duplicates +
// Malformed == Checkpoint, and Unique == the number of distinct keys in
// offsets 1..Checkpoint.
//
// The consumer truncates the log front only behind a committed checkpoint,
// so no record that the index still needs is ever freed.
//
// # The seen set
//
// Keys are random, so inserting them one by one into one big B+tree would
// dirty most of its leaf pages at every commit (measured: under 50,000
// events/s at 1M keys). The seen set is therefore a small log-structured
// merge tree inside bbolt: each chunk writes its new keys, sorted, as a new
// run (a nested bucket of blocks of about 16 KiB of keys, one Put per
// block), and runs of one size tier are merged, sequentially, once 16 of
// them exist, in the same transaction as the chunk that completes them. Each
// run has an in-memory bloom filter of exactly its keys, so confirming a
// positive reads about one run whatever their number.
//
// # Bloom filter front
//
// A bloom filter in memory answers "certainly new" for most new keys, which
// saves the lookups; a positive answer is confirmed in the seen set. The
// filters are never trusted for a positive, and they hold every stored key
// before Apply runs (every committed key is added after its commit, and Open
// either loads the snapshot that Close wrote for the same checkpoint, checked
// by CRC, or rebuilds them from the seen set), so they can neither store a
// duplicate nor drop a new event. The front filter is sized for
// Options.ExpectedKeys (or twice the stored keys, if more) at
// Options.FalsePositiveRate. When the stored keys outgrow the size it was
// built for, a filter twice the stored keys is rebuilt in the background from
// short read transactions while Apply keeps adding to the old one; keys
// committed during the rebuild are replayed into the new filter before it is
// swapped in. The filters are guarded by a mutex (bloom.BloomFilter is not
// safe for concurrent use).
//
// # Listing
//
// Feed pages through the events in seq order (all, or one topic's through
// byseq). List pages through one topic in (timestamp, offset) order or
// through all topics in (topic, timestamp, offset) order, through bytime. A cursor names the last event
// of the previous page; a page seeks to it and reads limit+1 keys, so each
// page costs O(limit) B+tree steps whatever the number of stored events.
package dedup
