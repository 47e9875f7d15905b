// Package bench holds the service's end-to-end throughput benchmarks. Each
// starts the real aggregator binary on 127.0.0.1, drives it with the load
// generator (cmd/loadgen) over loopback, and reports what the service did:
// requests or events per second, latency percentiles, the server's CPU per
// request (from /proc), and, in the same run, the same workload against a
// null net/http handler (bench/nullserver) as the ceiling, with the ratio.
//
// The benchmarks run a fixed workload per cell, not b.N iterations: run them
// with -benchtime=1x, on a quiet machine, one at a time:
//
//	go test -run '^$' -bench . -benchtime=1x -timeout 60m ./bench/
//
// BENCH_SECONDS (default 5) sets the length of a publish run; BENCH_OUT,
// when set, names a JSON-lines file every cell appends its figures to, from
// which bench/plot draws the plots of docs/performance.md. bench/loadgen-runs.sh
// stays for long runs.
package bench
