package certsource

import (
	"sync"
	"time"
)

// renewals follows the renewals that CertMagic's maintenance makes of
// managed certificates, per name, so that a failed one can report when
// the next attempt comes. It is process-wide, like CertMagic's own
// schedule of renewal retries.
var renewals = &renewalTracker{}

// renewalTracker remembers, per name, when the current renewal attempt
// started and how many attempts in a row have failed.
type renewalTracker struct {
	mu    sync.Mutex
	names map[string]*renewalState
}

type renewalState struct {
	attempt  time.Time // when the current or last attempt started
	failures int       // attempts in a row that failed
	first    time.Time // when the first of them started
}

// renewalBackoff is how long CertMagic waits after the n-th failed
// renewal in a row (n from 1) before its maintenance may try again: the
// schedule of certmagic v0.25's renewal retries (1m, 2m, 2m, 5m, 10m × 3,
// 20m × 4, 30m × 6, 1h × 3, 2h × 2, 3h × 2, then 6h).
func renewalBackoff(n int) time.Duration {
	schedule := [...]time.Duration{
		1 * time.Minute, 2 * time.Minute, 2 * time.Minute, 5 * time.Minute,
		10 * time.Minute, 10 * time.Minute, 10 * time.Minute,
		20 * time.Minute, 20 * time.Minute, 20 * time.Minute, 20 * time.Minute,
		30 * time.Minute, 30 * time.Minute, 30 * time.Minute, 30 * time.Minute, 30 * time.Minute, 30 * time.Minute,
		1 * time.Hour, 1 * time.Hour, 1 * time.Hour,
		2 * time.Hour, 2 * time.Hour,
		3 * time.Hour, 3 * time.Hour,
		6 * time.Hour,
	}
	if n < 1 {
		return 0
	}
	return schedule[min(n, len(schedule))-1]
}

// started records that a renewal attempt for name starts at now and
// returns when the renewal started: the first of a series of failed
// attempts, or now.
func (r *renewalTracker) started(name string, now time.Time) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.state(name)
	st.attempt = now
	if st.failures == 0 {
		st.first = now
	}
	return st.first
}

// failed records that the renewal attempt for name failed at now, and
// returns when the renewal started and when the next attempt comes: the
// first maintenance check, every interval from the attempt's start, after
// CertMagic's backoff has passed.
func (r *renewalTracker) failed(name string, now time.Time, interval time.Duration) (started, retry time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.state(name)
	if st.attempt.IsZero() || st.attempt.After(now) {
		st.attempt = now
	}
	if st.failures == 0 {
		st.first = st.attempt
	}
	st.failures++
	return st.first, nextCheck(st.attempt, now.Add(renewalBackoff(st.failures)), interval)
}

// done forgets name after a renewal succeeded.
func (r *renewalTracker) done(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.names, name)
}

func (r *renewalTracker) state(name string) *renewalState {
	if r.names == nil {
		r.names = make(map[string]*renewalState)
	}
	st := r.names[name]
	if st == nil {
		st = &renewalState{}
		r.names[name] = st
	}
	return st
}

// nextCheck returns the first time at or after notBefore of the checks
// that run every interval from tick.
func nextCheck(tick, notBefore time.Time, interval time.Duration) time.Time {
	if interval <= 0 || !notBefore.After(tick) {
		return notBefore
	}
	n := (notBefore.Sub(tick) + interval - 1) / interval
	return tick.Add(n * interval)
}
