// Package natslog is the service's log on a NATS JetStream stream: the
// cluster-mode replacement of the local write-ahead log. A *Log satisfies
// both sides the service needs: cmd/aggregator's Appender (the publish path)
// and dedup.Source (the consumer), with stream sequences as offsets.
//
// # Publishing
//
// Append publishes one request's records as one JetStream atomic batch
// (ADR-50, nats-server 2.12+; the stream is created with allow_atomic), so
// the request is stored whole or not at all, at consecutive stream
// sequences, and Append returns only after the stream leader answered the
// commit: the batch is then on a quorum of the stream's replicas (in their
// memory, or on their disks with the servers' sync_interval: always). A
// single record is a plain JetStream publish. A request of more records than
// Options.MaxBatch (the servers' jetstream.limits.batch.max_msgs, 1000 by
// default) is split into batches of MaxBatch in request order; each batch is
// atomic, but batches of other publishers may land between them, and a
// failed request may leave a prefix of whole batches behind (the index
// deduplicates on (topic, event_id), so the publisher's retry counts them as
// duplicates, never twice as unique).
//
// No Nats-Msg-Id is set: the stream does not deduplicate, the index does.
//
// # Reading
//
// One reader goroutine per Log consumes the stream in stream order through
// an ordered consumer (an ephemeral, in-memory, no-ack consumer that the
// client recreates at the next sequence after a connection loss or a missed
// heartbeat) and buffers up to Options.ReadBuffer records ahead of the
// consumer. It starts at the sequence the consumer first asks for (the
// index checkpoint + 1), so a node restored from a peer's index copy resumes
// right after that copy's checkpoint.
//
// The stream is created with deny_delete and no age, count or TTL limits,
// so it has no holes: sequences are contiguous from the stream's first to its
// last. Should the reader see a jump anyway, every missing sequence is asked
// of the stream leader: a message it still has is applied as read; one that
// is gone is handed to the consumer as an empty record (counted as malformed,
// the same on every node that reads the stream after the deletion); a
// sequence below the stream's first sequence means records this node has not
// applied were purged, and the reader stops with ErrPurged instead of
// skipping them.
//
// # Retention
//
// The stream uses limits retention with discard-new and a byte bound
// (Options.MaxBytes): when full, publishes are refused (ErrOverloaded,
// HTTP 429) and nothing stored is ever dropped by the server. Each node
// writes its checkpoint (the last sequence its index committed) to a KV
// bucket, and a janitor on every node purges the stream below the smallest
// checkpoint of all nodes there. A node that is down keeps its entry, so
// the stream keeps what it has not applied, and it catches up when it is
// back.
package natslog
