// Package cluster holds what the cluster mode needs beyond the service: a
// module of its own, so that the service's go.mod carries only the NATS
// client while nats-server (built from its module into a binary, or run
// in-process) stays here. The package itself runs nats-server and
// aggregator processes on loopback for `make cluster` and the cluster tests
// (see harness.go).
package cluster
