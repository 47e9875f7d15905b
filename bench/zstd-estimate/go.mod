module github.com/aggregator-dev/aggregator/bench/zstd-estimate

go 1.26.8

require (
	github.com/aggregator-dev/aggregator v0.0.0
	github.com/klauspost/compress v1.20.3
	go.etcd.io/bbolt v1.5.0
)

require golang.org/x/sys v0.50.0 // indirect

replace github.com/aggregator-dev/aggregator => ../..
