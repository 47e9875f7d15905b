package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"syscall"
	"time"
)

// serverProc is one running aggregator process started by the drill.
type serverProc struct {
	cmd     *exec.Cmd
	exited  chan struct{} // closed when the process has exited
	waitErr error         // Wait's result, valid once exited is closed
}

// startServer starts bin on addr with dataDir and the extra flags; its
// output goes to logw.
func startServer(bin, addr, dataDir string, logw io.Writer, extra ...string) (*serverProc, error) {
	cmd := exec.Command(bin, append([]string{"--addr", addr, "--data-dir", dataDir}, extra...)...)
	cmd.Stdout = logw
	cmd.Stderr = logw
	cmd.Env = append(cmd.Environ(), "AGG_ADDR="+addr, "AGG_DATA_DIR="+dataDir)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start server: %w", err)
	}
	s := &serverProc{cmd: cmd, exited: make(chan struct{})}
	go func() { // owned by s: ends when the process exits; kill/terminate wait for it
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()
	return s, nil
}

// hasExited reports whether the process has exited.
func (s *serverProc) hasExited() bool {
	select {
	case <-s.exited:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (s *serverProc) kill() {
	if !s.hasExited() {
		_ = s.cmd.Process.Signal(syscall.SIGKILL)
	}
	<-s.exited
}

// terminate sends SIGTERM and waits up to timeout for the exit; on timeout
// it kills the process and returns an error. It returns the exit code.
func (s *serverProc) terminate(timeout time.Duration) (int, error) {
	if !s.hasExited() {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-s.exited:
	case <-t.C:
		s.kill()
		return -1, fmt.Errorf("no exit %s after SIGTERM (killed)", timeout)
	}
	return s.cmd.ProcessState.ExitCode(), nil
}

// waitReady polls GET /readyz until it answers 200, the process exits, or
// timeout passes.
func waitReady(ctx context.Context, c *http.Client, base string, s *serverProc, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/readyz", nil)
		if err != nil {
			return 0, fmt.Errorf("new request: %w", err)
		}
		resp, err := c.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Since(start), nil
			}
			last = fmt.Errorf("readyz status %d", resp.StatusCode)
		} else {
			last = err
		}
		select {
		case <-s.exited:
			return 0, fmt.Errorf("server exited before ready: %v", s.waitErr)
		case <-ctx.Done():
			return 0, fmt.Errorf("not ready after %s: %w (last: %v)", timeout, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// freeAddr returns a 127.0.0.1 address with a port that was free a moment ago.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find free port: %w", err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), nil
}
