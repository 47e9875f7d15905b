package dedup

import (
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// The dedup window (Options.DedupWindow) bounds the seen set by age: a key
// applied more than the window ago may be forgotten, and an event with it
// is then stored again as new. The seen set is a log-structured merge tree
// of runs written in apply order, so whole runs are dropped, never single
// keys: a run goes once its newest key is older than the window.
//
// Merges mix ages: a run merged from runs applied hours apart keeps its
// oldest keys until its newest one ages out. Left to the size tiers alone,
// the largest runs would span most of the index's life. So with a window,
// the apply times are cut into epochs of a quarter of the window, and runs
// merge only within one epoch: every run's keys were applied less than a
// quarter of the window apart. Hence the promise: a key is remembered for
// at least the window after it was applied, and forgotten by the first
// maintenance step after 1.25 times the window (steps run at every chunk
// commit and every second while the consumer is idle; a run of a version
// without apply times, or merged while the window was off or longer, is
// kept until its newest key ages out, which may be longer).
//
// A forgotten key still sets bits of the front bloom filter, so that filter
// is rebuilt from the seen set once as many keys were added to it as it was
// sized for (see Store.committed).

// windowEpochs is how many epochs a window is cut into.
const windowEpochs = 4

// maxDropsPerStep bounds the runs one maintenance step drops (each drop
// frees the pages of a run in the step's transaction).
const maxDropsPerStep = 4

// epochOf returns the epoch of a run's apply times and whether they lie in
// one epoch; without a window every run is in epoch 0.
func (s *Store) epochOf(sp runSpan) (int64, bool) {
	w := s.opts.DedupWindow
	if w <= 0 {
		return 0, true
	}
	e := int64(w / windowEpochs)
	a, b := sp.oldest/e, sp.newest/e
	return a, a == b
}

// dropRuns deletes, oldest first, up to maxDropsPerStep runs whose newest
// key was applied more than the window before now. It returns the runs
// left (a new slice), the number of keys dropped, and whether the bound
// stopped it.
func (s *Store) dropRuns(tx *bolt.Tx, runs []runInfo, now int64) (kept []runInfo, dropped uint64, capped bool, err error) {
	w := s.opts.DedupWindow
	if w <= 0 || len(runs) == 0 {
		return runs, 0, false, nil
	}
	cutoff := now - int64(w)
	kept = make([]runInfo, 0, len(runs))
	drops := 0
	for _, r := range runs {
		if r.newest >= cutoff {
			kept = append(kept, r)
			continue
		}
		if drops == maxDropsPerStep {
			kept, capped = append(kept, r), true
			continue
		}
		if err := tx.Bucket(bucketSeen).DeleteBucket(runName(r.id)); err != nil {
			return nil, 0, false, fmt.Errorf("drop run %d: %w", r.id, err)
		}
		if err := tx.Bucket(bucketRuns).Delete(runName(r.id)); err != nil {
			return nil, 0, false, fmt.Errorf("drop run entry: %w", err)
		}
		dropped += r.n
		drops++
	}
	if drops == 0 {
		return runs, 0, false, nil
	}
	return kept, dropped, capped, nil
}
