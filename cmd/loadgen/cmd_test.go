package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestExitStatus(t *testing.T) {
	for _, c := range []struct {
		name   string
		err    error
		code   int
		stderr string
	}{
		{"nil", nil, exitOK, ""},
		{"bare check failure", errCheckFailed, exitFail, ""},
		{"check failure with a reason", checkFailed(errors.New("not ready")), exitFail, "loadgen: not ready\n"},
		{"wrapped check failure", fmt.Errorf("drill: %w", checkFailed(errors.New("x"))), exitFail, "loadgen: drill: x\n"},
		{"usage", usagef("cycles must be in [%d, %d]", 1, 1000), exitUsage, "loadgen: cycles must be in [1, 1000]\n"},
		{"reported usage", &usageError{err: errors.New("bad flag"), reported: true}, exitUsage, ""},
		{"operational", errors.New("open acklog: denied"), exitUsage, "loadgen: open acklog: denied\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var stderr bytes.Buffer
			if code := exitStatus(c.err, &stderr); code != c.code || stderr.String() != c.stderr {
				t.Fatalf("exitStatus = %d, stderr %q; want %d, %q", code, stderr.String(), c.code, c.stderr)
			}
		})
	}
}

func TestCLIUsage(t *testing.T) {
	t.Setenv("AGG_ADDR", "") // the default target
	for _, c := range []struct {
		args   []string
		code   int
		stdout string // a substring; "" means nothing
		stderr string // a substring; "" means nothing
	}{
		{nil, exitUsage, "", "usage: loadgen <command>"},
		{[]string{"help"}, exitOK, "usage: loadgen <command>", ""},
		{[]string{"-h"}, exitOK, "usage: loadgen <command>", ""},
		{[]string{"bogus"}, exitUsage, "", `loadgen: unknown command "bogus"` + "\nusage: loadgen <command>"},
		// A command's -h prints its flags and exits 0, as loadgen -h does.
		{[]string{"publish", "-h"}, exitOK, "", "Usage of loadgen publish:"},
		{[]string{"verify", "--bogus"}, exitUsage, "", "flag provided but not defined: -bogus"},
		{[]string{"publish", "--concurrency", "0"}, exitUsage, "", "loadgen: concurrency must be in [1, 4096]\n"},
		{[]string{"publish", "--events", "0"}, exitUsage, "", "loadgen: events must be at least 1\n"},
		{[]string{"verify", "--target", "http://localhost:1"}, exitUsage, "", "loadgen: target must be http://127.0.0.1:<port>"},
		{[]string{"drill", "--cycles", "0"}, exitUsage, "", "loadgen: cycles must be in [1, 1000]\n"},
		{[]string{"startup"}, exitUsage, "", "loadgen: startup needs -server and -data-dir\n"},
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), c.args, &stdout, &stderr)
			if code != c.code {
				t.Errorf("exit %d, want %d", code, c.code)
			}
			for _, o := range []struct {
				name      string
				got, want string
			}{{"stdout", stdout.String(), c.stdout}, {"stderr", stderr.String(), c.stderr}} {
				if o.want == "" && o.got != "" || !strings.Contains(o.got, o.want) {
					t.Errorf("%s %q, want %q", o.name, o.got, o.want)
				}
			}
		})
	}
}
