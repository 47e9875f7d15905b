// Command devcluster runs a development cluster on loopback: three
// nats-servers (clustered, JetStream on) and aggregator nodes in cluster
// mode, each printing its URL, until Ctrl-C stops everything (aggregators
// first, then the servers). `make cluster` builds the binaries and runs it.
//
// Usage:
//
//	devcluster -nats-bin bin/nats-server -agg-bin bin/aggregator -dir cluster/data
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/aggregator-dev/aggregator/cluster"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "devcluster:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("devcluster", flag.ContinueOnError)
	natsBin := fs.String("nats-bin", "bin/nats-server", "nats-server binary")
	aggBin := fs.String("agg-bin", "bin/aggregator", "aggregator binary")
	dir := fs.String("dir", "cluster/data", "data directory of the servers and nodes (kept across runs)")
	nodes := fs.Int("nodes", 3, "aggregator nodes")
	syncAlways := fs.Bool("sync-always", false, "nats-servers fsync before every acknowledgement (sync_interval: always)")
	natsPort := fs.Int("nats-port", 4222, "client port of the first nats-server (the others follow)")
	routePort := fs.Int("route-port", 6222, "cluster port of the first nats-server (the others follow)")
	httpPort := fs.Int("http-port", 8081, "port of the first aggregator node (the others follow)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	n, err := cluster.NewNATS(cluster.NATSOptions{
		Bin: *natsBin, Dir: filepath.Join(*dir, "nats"), N: 3, SyncAlways: *syncAlways, MaxBatch: 10_000,
		ClientPorts: []int{*natsPort, *natsPort + 1, *natsPort + 2},
		RoutePorts:  []int{*routePort, *routePort + 1, *routePort + 2},
	})
	if err != nil {
		return err
	}
	var aggs []*cluster.Aggregator
	defer func() {
		for _, a := range aggs {
			if err := a.Stop(30 * time.Second); err != nil {
				fmt.Fprintf(os.Stderr, "devcluster: %s: %v\n", a.Name, err)
			}
		}
		if err := n.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "devcluster: nats:", err)
		}
		fmt.Println("devcluster: stopped")
	}()
	if err := n.Start(); err != nil {
		return err
	}
	for i, p := range n.Procs {
		fmt.Printf("nats-server n%d: nats://127.0.0.1:%d (log %s)\n", i+1, n.Opts.ClientPorts[i], p.LogPath)
	}
	for i := range *nodes {
		a, err := cluster.NewAggregator(*aggBin, *dir, fmt.Sprintf("a%d", i+1),
			fmt.Sprintf("127.0.0.1:%d", *httpPort+i), n.URL(),
			"--nats-max-batch", "10000") // the servers allow 10,000 (a whole request) per atomic batch
		if err != nil {
			return err
		}
		if err := a.Start(); err != nil {
			return err
		}
		aggs = append(aggs, a)
	}
	for _, a := range aggs {
		if err := a.WaitReady(2 * time.Minute); err != nil {
			return err
		}
		fmt.Printf("%s: %s (data %s, log %s)\n", a.Name, a.URL(), a.DataDir, a.LogPath)
	}
	fmt.Println("devcluster: ready; Ctrl-C stops everything")
	<-ctx.Done()
	return nil
}
