package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/aggregator-dev/aggregator/internal/powerfs"
)

// powerConfig describes a power-loss drill: the crash drill's cycles, with
// the data directory on a powerfs whose power is cut at each kill.
type powerConfig struct {
	Server      string         // aggregator binary; "" builds BuildPkg with Tags
	BuildPkg    string         // package built when Server is "" (default ./cmd/aggregator)
	Tags        string         // build tags of that build (powerloss_nofsync: the negative check)
	WorkDir     string         // backing and mount directories, server log, acklog; "" makes a temporary one
	Cycles      int            // cycles per mode (default 30)
	Modes       []powerfs.Mode // default drop-all, then torn
	Gen         genConfig      // events of each cycle
	Concurrency int            // concurrent publishers
	ServerArgs  []string       // extra flags of every server start
	Timeout     time.Duration  // bound of every wait (default 60s)
	Keep        bool           // keep the work directory even when every cycle passed
	Out         io.Writer      // one line per cycle, then a summary
}

// powerResult counts the cycles of a power-loss drill and what the final
// check found.
type powerResult struct {
	drillResult
	Final *verifyReport // every acknowledged event against the listing, after the last cycle
	Cuts  map[powerfs.Mode]*cutStats
}

// cutStats adds up the cuts of one mode.
type cutStats struct {
	Cuts        int // cuts made
	Dropping    int // cuts that dropped (or tore) at least one unsynced operation
	DataDropped int // unsynced writes and truncates dropped
	Torn        int // writes kept in part
	EntriesLost int // unsynced entry changes dropped
}

// powerMount is the powerfs that holds the drill's data directory.
type powerMount struct {
	backing, mnt string
	fs           *powerfs.FS
	rng          *rand.Rand
	stats        map[powerfs.Mode]*cutStats
	last         string // report of the last cut, for a failure message
}

func (pm *powerMount) mount() error {
	fsys, err := powerfs.Mount(pm.backing, pm.mnt, nil)
	if err != nil {
		return err
	}
	pm.fs = fsys
	return nil
}

// cut returns the damage step of a crash case: crashCase calls it once the
// killed server has exited, so no request of the server is in flight and
// none can follow, and the file system's durable state is the one of the
// moment of the kill (a cut made before the kill would let the server go
// on writing to a frozen file system, with nothing gained). It cuts the
// power, unmounts, and mounts the durable state again.
func (pm *powerMount) cut(mode powerfs.Mode) func() (string, error) {
	return func() (string, error) {
		rep, err := pm.fs.Cut(mode, pm.rng)
		if err != nil {
			return "", err
		}
		pm.last = rep.String()
		if err := pm.fs.Unmount(); err != nil {
			return "", err
		}
		if err := pm.mount(); err != nil {
			return "", fmt.Errorf("remount: %w", err)
		}
		st := pm.stats[mode]
		st.Cuts++
		dropped, lost := rep.DataOps-rep.DataOpsKept, rep.Changes-rep.ChangesKept
		st.DataDropped += dropped
		st.Torn += rep.TornWrites
		st.EntriesLost += lost
		if dropped+lost+rep.TornWrites > 0 {
			st.Dropping++
		}
		return rep.String(), nil
	}
}

// powerDrill runs Cycles crash cases per mode, each cutting the power at
// the kill, and checks after each (and at the end) that every acknowledged
// event is listed once. An error is returned only when the drill could not
// be set up or was interrupted.
func powerDrill(ctx context.Context, cfg powerConfig) (res powerResult, err error) {
	cfg = cfg.withDefaults()
	cfg.Gen.RunID = "probe"
	if err := cfg.Gen.validate(); err != nil {
		return res, fmt.Errorf("%w: %v", errBadDrillConfig, err)
	}
	workDir, keep := cfg.WorkDir, cfg.Keep || cfg.WorkDir != ""
	if workDir == "" {
		if workDir, err = os.MkdirTemp("", "aggregator-powerloss-"); err != nil {
			return res, fmt.Errorf("work dir: %w", err)
		}
	}
	res.WorkDir = workDir
	pm := &powerMount{backing: filepath.Join(workDir, "backing"), mnt: filepath.Join(workDir, "mnt"),
		rng: rand.New(rand.NewPCG(cfg.Gen.Seed, 0xc0ffee)), stats: map[powerfs.Mode]*cutStats{}}
	res.Cuts = pm.stats
	for _, m := range cfg.Modes {
		pm.stats[m] = &cutStats{}
	}
	for _, dir := range []string{pm.backing, pm.mnt} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return res, fmt.Errorf("work dir: %w", err)
		}
	}
	if err := pm.mount(); err != nil {
		return res, err
	}
	d := &drillRun{cfg: drillConfig{Server: cfg.Server, DataDir: filepath.Join(pm.mnt, "data"), Gen: cfg.Gen,
		Concurrency: cfg.Concurrency, ServerArgs: cfg.ServerArgs, Timeout: cfg.Timeout, Out: cfg.Out}, workDir: workDir,
		rng: rand.New(rand.NewPCG(cfg.Gen.Seed, 0x5eed))}
	defer func() {
		d.shutdown() // stops the server: before the unmount
		if uerr := pm.fs.Unmount(); uerr != nil && err == nil {
			err = uerr
		}
		if err == nil && res.Failed == 0 && !keep {
			_ = os.RemoveAll(workDir)
			res.WorkDir = ""
		}
	}()
	if d.cfg.Server == "" {
		if d.cfg.Server, err = buildServer(ctx, cfg.BuildPkg, cfg.Tags, workDir); err != nil {
			return res, err
		}
	}
	if err := d.setup(ctx); err != nil {
		return res, err
	}
	fmt.Fprintf(cfg.Out, "powerloss: seed %d, server %s (tags %q), data %s on powerfs over %s, log %s\n",
		cfg.Gen.Seed, d.bin, cfg.Tags, d.dataDir, pm.backing, d.logFile.Name())
	runPowerCycles(ctx, cfg, d, pm, &res)
	if ctx.Err() != nil {
		return res, fmt.Errorf("powerloss drill interrupted: %w", ctx.Err())
	}
	res.Final, err = finalCheck(ctx, d)
	printPowerSummary(cfg, &res, err)
	detail, err := d.followerCase(ctx)
	res.record(cfg.Out, "follower", detail, err)
	return res, nil
}

func (cfg powerConfig) withDefaults() powerConfig {
	if cfg.Cycles <= 0 {
		cfg.Cycles = 30
	}
	if len(cfg.Modes) == 0 {
		cfg.Modes = []powerfs.Mode{powerfs.DropAll, powerfs.Torn}
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 8
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 60 * time.Second
	}
	if cfg.BuildPkg == "" {
		cfg.BuildPkg = "./cmd/aggregator"
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	return cfg
}

// runPowerCycles runs the crash cases, mode after mode, and reports each.
func runPowerCycles(ctx context.Context, cfg powerConfig, d *drillRun, pm *powerMount, res *powerResult) {
	for _, mode := range cfg.Modes {
		for k := 1; k <= cfg.Cycles && ctx.Err() == nil; k++ {
			name := fmt.Sprintf("%s cycle %d/%d", mode, k, cfg.Cycles)
			pm.last = ""
			detail, err := d.crashCase(ctx, fmt.Sprintf("%s%d", mode, k), cfg.Gen.Events, pm.cut(mode))
			if err != nil {
				res.Failed++
				fmt.Fprintf(cfg.Out, "%s: FAIL: %v\n", name, err)
				if pm.last != "" && !strings.Contains(err.Error(), pm.last) {
					fmt.Fprintf(cfg.Out, "  after %s\n", pm.last)
				}
				continue
			}
			res.Passed++
			fmt.Fprintf(cfg.Out, "%s: ok: %s\n", name, detail)
		}
	}
}

// finalCheck lists every event once more against every acknowledgement of
// the drill.
func finalCheck(ctx context.Context, d *drillRun) (*verifyReport, error) {
	if err := d.ensureRunning(ctx); err != nil {
		return nil, err
	}
	if err := d.acks.Flush(); err != nil {
		return nil, err
	}
	f, err := os.Open(d.ackPath)
	if err != nil {
		return nil, fmt.Errorf("open acklog: %w", err)
	}
	acked, _, err := readAckLog(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	return verify(ctx, d.client, verifyConfig{Base: d.base, Acked: acked, PageSize: 1000, Wait: d.cfg.Timeout, Timeout: d.cfg.Timeout})
}

func printPowerSummary(cfg powerConfig, res *powerResult, finalErr error) {
	for _, mode := range cfg.Modes {
		st := res.Cuts[mode]
		fmt.Fprintf(cfg.Out, "powerloss: %s: %d cuts, %d dropped unsynced operations (%d writes and truncates, %d torn, %d entry changes)\n",
			mode, st.Cuts, st.Dropping, st.DataDropped, st.Torn, st.EntriesLost)
	}
	switch {
	case finalErr != nil:
		res.Failed++
		fmt.Fprintf(cfg.Out, "final check: FAIL: %v\n", finalErr)
	case !res.Final.OK():
		res.Failed++
		fmt.Fprintf(cfg.Out, "final check: FAIL: %s\n", res.Final)
	default:
		res.Passed++
		fmt.Fprintf(cfg.Out, "final check: ok: %s\n", res.Final)
	}
}

// buildServer builds pkg with tags into dir.
func buildServer(ctx context.Context, pkg, tags, dir string) (string, error) {
	bin := filepath.Join(dir, "aggregator")
	args := []string{"build", "-o", bin}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	out, err := exec.CommandContext(ctx, "go", append(args, pkg)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build %s (tags %q): %w\n%s", pkg, tags, err, out)
	}
	return bin, nil
}
