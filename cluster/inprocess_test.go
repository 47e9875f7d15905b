package cluster

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// runNATS starts n in-process nats-servers with JetStream on loopback, a
// cluster when n > 1, and shuts them down at the end of the test. They are
// what the functional tests of natslog run against; kill -9 needs the
// processes of harness.go.
func runNATS(tb testing.TB, n int) []*server.Server {
	tb.Helper()
	base := tb.TempDir()
	ports, err := FreePorts(2 * n)
	if err != nil {
		tb.Fatal(err)
	}
	var routes string
	for i := range n {
		if i > 0 {
			routes += ","
		}
		routes += fmt.Sprintf("nats-route://127.0.0.1:%d", ports[n+i])
	}
	var servers []*server.Server
	for i := range n {
		o := &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       ports[i],
			JetStream:  true,
			StoreDir:   filepath.Join(base, fmt.Sprint(i)),
			NoLog:      true,
			NoSigs:     true,
		}
		o.JetStreamLimits.MaxBatchSize = 10_000
		if n > 1 {
			o.Cluster = server.ClusterOpts{Name: "test", Host: "127.0.0.1", Port: ports[n+i]}
			o.Routes = server.RoutesFromStr(routes)
		}
		s, err := server.NewServer(o)
		if err != nil {
			tb.Fatal(err)
		}
		go s.Start()
		servers = append(servers, s)
	}
	for _, s := range servers {
		if !s.ReadyForConnections(10 * time.Second) {
			tb.Fatalf("nats-server %s not ready", s.Name())
		}
	}
	tb.Cleanup(func() {
		for _, s := range servers {
			s.Shutdown()
			s.WaitForShutdown()
		}
	})
	return servers
}

func urls(servers []*server.Server) []string {
	var out []string
	for _, s := range servers {
		out = append(out, s.ClientURL())
	}
	return out
}
