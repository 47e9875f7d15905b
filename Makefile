# Makefile of the Aggregator. Every target is a thin wrapper around the go tool,
# so the same commands work without make (see README.md).

GO        ?= go
ADDR      ?= 127.0.0.1:8080
DATA_DIR  ?= ./data
BIN_DIR   ?= bin
BENCHTIME ?= 1s
# staticcheck: the installed one, else fetched and run by the go tool.
STATICCHECK ?= $(shell command -v staticcheck 2>/dev/null || echo "$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2")
DRILL_ARGS ?=
POWERLOSS_ARGS ?=
CLUSTER_ARGS ?=

.PHONY: all build run test test-short bench lint drill powerloss nats-server cluster clean

all: build

## build: static binaries of every command into ./bin
build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN_DIR)/ ./cmd/...

## run: start the aggregator on $(ADDR) with data in $(DATA_DIR); Ctrl-C stops it
## cleanly (exit 0). The binary is built first and exec'ed, since go run
## turns an interrupted program into exit status 1.
run:
	@CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN_DIR)/aggregator ./cmd/aggregator
	@exec $(BIN_DIR)/aggregator --addr $(ADDR) --data-dir $(DATA_DIR)

## test: vet, then every test; with the race detector when cgo works (a C
## compiler is there, as in CI), else without it, saying which. The service's
## module first, then the modules of their own (so that their dependencies
## stay out of the service's go.mod): cluster/ (real nats-servers, kill -9
## tests), e2e/ (the binary's replies against api/openapi.json, the dashboard
## in headless Chromium; there the race detector goes into the aggregator
## binary the tests run, E2E_RACE, not into the test binary), and interop/
## (Benthos and, when installed, syslog-ng against the real binary).
test:
	@if [ "$$($(GO) env CGO_ENABLED)" = 1 ] && command -v "$$($(GO) env CC)" >/dev/null 2>&1; then \
		echo "make test: with the race detector"; race=-race; \
	else \
		echo "make test: no C compiler for cgo, so WITHOUT the race detector (install gcc to get it)"; race=; export CGO_ENABLED=0; \
	fi; \
	$(GO) vet ./... && $(GO) test $$race -count=1 ./... && \
	echo "make test: the cluster module (cluster/: nats-server built from its module, kill -9 tests)" && \
	(cd cluster && $(GO) vet ./... && $(GO) test $$race -count=1 ./...) && \
	echo "make test: the e2e module (OpenAPI replies, the dashboard in headless Chromium)" && \
	(cd e2e && $(GO) vet ./... && E2E_RACE=$$race $(GO) test -count=1 ./...)
	@echo "make test: interop (builds Benthos: about a minute the first time)"
	cd interop && $(GO) vet ./... && $(GO) test -count=1 ./...

## test-short: the quick subset, without the end-to-end kill tests and
## without the interop module
test-short:
	$(GO) test -short -count=1 ./...
	cd cluster && $(GO) test -short -count=1 ./...

## bench: every benchmark, with allocation counts
bench:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./...

## lint: gofmt, go vet and staticcheck
lint:
	@out="$$(gofmt -l .)"; if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...
	cd interop && $(GO) vet ./... && $(STATICCHECK) ./...
	cd cluster && $(GO) vet ./... && $(STATICCHECK) ./...
	cd e2e && $(GO) vet ./... && $(STATICCHECK) ./...

## drill: the crash drill of cmd/loadgen (kill -9 under load, restart, verify)
drill:
	$(GO) run ./cmd/loadgen drill $(DRILL_ARGS)

## powerloss: the power-loss drill: 30 kill -9 + power-cut cycles per mode (drop-all, torn) on powerfs (root, /dev/fuse)
powerloss:
	$(GO) run ./cmd/loadgen powerloss -cycles 30 $(POWERLOSS_ARGS)

## nats-server: build nats-server from its Go module (required by cluster/go.mod,
## so the service's go.mod stays small) into ./bin
nats-server:
	cd cluster && CGO_ENABLED=0 $(GO) build -trimpath -o $(abspath $(BIN_DIR))/nats-server github.com/nats-io/nats-server/v2

## cluster: three clustered nats-servers (JetStream, loopback ports 4222-4224,
## routes 6222-6224) and three aggregator nodes in cluster mode on
## 127.0.0.1:8081-8083, data under ./cluster/data; Ctrl-C stops everything
cluster: build nats-server
	@cd cluster && CGO_ENABLED=0 $(GO) build -trimpath -o $(abspath $(BIN_DIR))/devcluster ./cmd/devcluster
	@exec $(BIN_DIR)/devcluster -nats-bin $(BIN_DIR)/nats-server -agg-bin $(BIN_DIR)/aggregator -dir cluster/data $(CLUSTER_ARGS)

clean:
	rm -rf $(BIN_DIR)
