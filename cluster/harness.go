package cluster

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Build builds the nats-server binary (from the nats-server module this
// module requires, in moduleDir, this module's root) and the aggregator
// (in serviceDir, the service module's root) into binDir.
func Build(ctx context.Context, moduleDir, serviceDir, binDir string) (natsBin, aggBin string, err error) {
	natsBin = filepath.Join(binDir, "nats-server")
	aggBin = filepath.Join(binDir, "aggregator")
	for _, b := range [][3]string{
		{natsBin, "github.com/nats-io/nats-server/v2", moduleDir},
		{aggBin, "./cmd/aggregator", serviceDir},
	} {
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", b[0], b[1])
		cmd.Dir = b[2]
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("go build %s: %w\n%s", b[1], err, out)
		}
	}
	return natsBin, aggBin, nil
}

// FreePorts returns n loopback TCP ports that were free a moment ago,
// chosen from 20000-31999: below Linux's ephemeral range, so that no
// outgoing connection takes one between the choice and the server's listen.
func FreePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
	}()
	ports := make([]int, 0, n)
	for tries := 0; len(ports) < n && tries < 1000; tries++ {
		p := 20000 + rand.IntN(12000)
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			continue
		}
		lns = append(lns, ln)
		ports = append(ports, p)
	}
	if len(ports) < n {
		return nil, errors.New("no free loopback ports")
	}
	return ports, nil
}

// Proc is a child process with its output in a log file.
type Proc struct {
	Name    string
	Bin     string
	Args    []string
	LogPath string
	// Stdout, when set, also gets the process's output (make cluster).
	Stdout *os.File

	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start starts the process; its output is appended to LogPath.
func (p *Proc) Start() error {
	if p.Running() {
		return fmt.Errorf("%s: already running", p.Name)
	}
	f, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "==== %s start %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(p.Args, " "))
	cmd := exec.Command(p.Bin, p.Args...)
	cmd.Stdout, cmd.Stderr = f, f
	if p.Stdout != nil {
		w := multiWriter{f, p.Stdout}
		cmd.Stdout, cmd.Stderr = w, w
	}
	// Its own process group: a Ctrl-C in the terminal reaches the launcher,
	// which stops the children in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	p.cmd, p.done = cmd, make(chan struct{})
	go func(done chan struct{}) {
		p.err = cmd.Wait()
		_ = f.Close()
		close(done)
	}(p.done)
	return nil
}

type multiWriter [2]*os.File

func (m multiWriter) Write(b []byte) (int, error) {
	_, _ = m[1].Write(b)
	return m[0].Write(b)
}

// Running reports whether the process was started and has not exited.
func (p *Proc) Running() bool {
	if p.done == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Kill sends SIGKILL and waits for the process to be gone.
func (p *Proc) Kill() {
	if !p.Running() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Stop sends SIGTERM and waits up to timeout, then kills. It returns the
// process's exit error (nil for exit status 0).
func (p *Proc) Stop(timeout time.Duration) error {
	if !p.Running() {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		p.Kill()
		return fmt.Errorf("%s: did not stop within %v, killed", p.Name, timeout)
	}
}

// CPU returns the user and system CPU time the running process has used
// so far (utime and stime of /proc/<pid>/stat: the counters getrusage
// reads for the process itself).
func (p *Proc) CPU() (user, sys time.Duration, err error) {
	if !p.Running() {
		return 0, 0, fmt.Errorf("%s: not running", p.Name)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0, 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	rest := string(b[strings.LastIndexByte(string(b), ')')+2:])
	f := strings.Fields(rest) // f[0] is field 3 (state): utime is field 14, stime 15
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("short /proc stat")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, err
	}
	const tick = 10 * time.Millisecond // USER_HZ is 100 on Linux
	return time.Duration(ut) * tick, time.Duration(st) * tick, nil
}

// Rusage returns the resource usage of the exited process (wait4's
// rusage: its whole life), nil while it runs.
func (p *Proc) Rusage() *syscall.Rusage {
	if p.done == nil || p.Running() {
		return nil
	}
	ru, _ := p.cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return ru
}

// Pid is the process id (0 when not running).
func (p *Proc) Pid() int {
	if !p.Running() {
		return 0
	}
	return p.cmd.Process.Pid
}

// NATSOptions describe a cluster of nats-server processes on loopback.
type NATSOptions struct {
	Bin  string // the nats-server binary
	Dir  string // node i keeps its config, store and log in Dir/n<i>
	N    int    // servers (default 3)
	Name string // cluster name (default "aggregator")
	// SyncAlways sets jetstream.sync_interval: always (fsync before every
	// acknowledgement) instead of the default 2-minute interval.
	SyncAlways bool
	// MaxBatch sets jetstream.limits.batch.max_msgs (0: the server's 1000).
	MaxBatch int
	// ClientPorts and RoutePorts, when set, fix the ports (make cluster);
	// else free ones are picked.
	ClientPorts, RoutePorts []int
	// Stdout, when set, also gets every server's output.
	Stdout *os.File
}

// NATS is a cluster of nats-server processes.
type NATS struct {
	Opts  NATSOptions
	Procs []*Proc
}

// NewNATS writes the servers' configuration files; Start starts them.
func NewNATS(o NATSOptions) (*NATS, error) {
	if o.N <= 0 {
		o.N = 3
	}
	if o.Name == "" {
		o.Name = "aggregator"
	}
	if len(o.ClientPorts) == 0 {
		ports, err := FreePorts(2 * o.N)
		if err != nil {
			return nil, err
		}
		o.ClientPorts, o.RoutePorts = ports[:o.N], ports[o.N:]
	}
	c := &NATS{Opts: o}
	var routes []string
	for _, p := range o.RoutePorts {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", p))
	}
	for i := range o.N {
		dir := filepath.Join(o.Dir, fmt.Sprintf("n%d", i+1))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		conf := filepath.Join(dir, "nats.conf")
		if err := os.WriteFile(conf, []byte(natsConfig(o, i, dir, routes)), 0o600); err != nil {
			return nil, err
		}
		c.Procs = append(c.Procs, &Proc{
			Name: fmt.Sprintf("nats n%d", i+1), Bin: o.Bin, Args: []string{"-c", conf},
			LogPath: filepath.Join(dir, "nats.log"), Stdout: o.Stdout,
		})
	}
	return c, nil
}

// natsConfig is server i's configuration file.
func natsConfig(o NATSOptions, i int, dir string, routes []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "server_name: n%d\nlisten: 127.0.0.1:%d\n", i+1, o.ClientPorts[i])
	fmt.Fprintf(&b, "jetstream {\n  store_dir: %q\n", filepath.Join(dir, "store"))
	if o.SyncAlways {
		b.WriteString("  sync_interval: always\n")
	}
	if o.MaxBatch > 0 {
		fmt.Fprintf(&b, "  limits { batch { max_msgs: %d } }\n", o.MaxBatch)
	}
	b.WriteString("}\n")
	if o.N > 1 {
		fmt.Fprintf(&b, "cluster {\n  name: %s\n  listen: 127.0.0.1:%d\n  routes: [\n", o.Name, o.RoutePorts[i])
		for _, r := range routes {
			fmt.Fprintf(&b, "    %s\n", r)
		}
		b.WriteString("  ]\n}\n")
	}
	return b.String()
}

// Start starts every server that is not running.
func (c *NATS) Start() error {
	for i := range c.Procs {
		if !c.Procs[i].Running() {
			if err := c.Procs[i].Start(); err != nil {
				return err
			}
		}
	}
	return nil
}

// URL is the comma-separated client URL list of every server.
func (c *NATS) URL() string {
	var urls []string
	for _, p := range c.Opts.ClientPorts {
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", p))
	}
	return strings.Join(urls, ",")
}

// Stop stops every server (SIGTERM).
func (c *NATS) Stop() error {
	var errs []error
	for _, p := range c.Procs {
		errs = append(errs, p.Stop(15*time.Second))
	}
	return errors.Join(errs...)
}

// Aggregator is one aggregator process in cluster mode.
type Aggregator struct {
	Proc
	Addr    string // 127.0.0.1:port
	DataDir string
}

// NewAggregator describes aggregator node name, on addr with its data in
// dir/<name>, using the NATS servers at natsURL; extra flags are appended.
func NewAggregator(bin, dir, name, addr, natsURL string, extra ...string) (*Aggregator, error) {
	data := filepath.Join(dir, name)
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, err
	}
	args := append([]string{"--addr", addr, "--data-dir", data, "--nats-url", natsURL}, extra...)
	return &Aggregator{
		Proc:    Proc{Name: "aggregator " + name, Bin: bin, Args: args, LogPath: filepath.Join(dir, name+".log")},
		Addr:    addr,
		DataDir: data,
	}, nil
}

// URL is the node's base URL.
func (a *Aggregator) URL() string { return "http://" + a.Addr }

// WaitReady polls /readyz until it answers 200, the process exits or
// timeout passes.
func (a *Aggregator) WaitReady(timeout time.Duration) error {
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if !a.Running() {
			return fmt.Errorf("%s exited: %v (log %s)", a.Name, a.err, a.LogPath)
		}
		resp, err := client.Get(a.URL() + "/readyz")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready within %v (log %s)", a.Name, timeout, a.LogPath)
}
