// Package dedup turns the write-ahead log into the set of unique events,
// exactly once per (topic, event_id).
//
// # Storage
//
// One bbolt database (index.db in the data directory) holds everything the
// consumer produces:
//
//   - seen: the authoritative set of (topic, event_id) keys;
//   - idx: one nested bucket per topic whose keys are (timestamp, offset) and
//     whose values are the encoded events, so the stored events and their
//     per-topic order are the same B+tree (a clustered index);
//   - topics: the lifetime count of unique events per topic;
//   - meta: the checkpoint (last applied log offset), the lifetime counters
//     (unique, duplicates, malformed) and the format version.
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
// # Bloom filter front
//
// A bloom filter in memory answers "certainly new" for most new keys, which
// saves a B+tree lookup; a positive answer is confirmed in the seen bucket.
// The filter is never trusted for a positive, and it holds every stored key
// before Apply runs (it is rebuilt from the seen bucket at Open, and every
// committed key is added after its commit), so it can neither store a
// duplicate nor drop a new event. When the stored keys outgrow the size the
// filter was built for, a larger one is rebuilt in the background from short
// read transactions while Apply keeps adding to the old one; keys committed
// during the rebuild are replayed into the new filter before it is swapped in.
//
// # Listing
//
// List pages through one topic in (timestamp, offset) order or through all
// topics in (topic, timestamp, offset) order. A cursor names the last event
// of the previous page; a page seeks to it and reads limit+1 keys, so each
// page costs O(limit) B+tree steps whatever the number of stored events.
package dedup
