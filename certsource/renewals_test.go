package certsource

import (
	"testing"
	"time"
)

func TestRenewalRetryTime(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		interval time.Duration
		took     time.Duration // from the attempt's start to its failure
		failures int           // failures before this one
		want     time.Duration // retry, from the attempt's start
	}{
		{name: "default interval, first failure", interval: 10 * time.Minute, took: 5 * time.Second, want: 10 * time.Minute},
		{name: "short interval, first failure", interval: time.Second, took: 1500 * time.Millisecond, want: 62 * time.Second},
		{name: "configured interval", interval: 3 * time.Minute, took: 10 * time.Second, want: 3 * time.Minute},
		{name: "backoff longer than the interval", interval: 3 * time.Minute, took: 10 * time.Second, failures: 3, want: 6 * time.Minute},
		{name: "long backoff", interval: 10 * time.Minute, took: time.Second, failures: 40, want: 6*time.Hour + 10*time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &renewalTracker{}
			start := t0
			for i := 0; i < tt.failures; i++ {
				r.started("a.example", start)
				r.failed("a.example", start, tt.interval)
				start = start.Add(time.Hour)
			}
			r.started("a.example", start)
			first, retry := r.failed("a.example", start.Add(tt.took), tt.interval)
			if !first.Equal(t0) {
				t.Errorf("started = %s, want the first attempt's start %s", first, t0)
			}
			if got := retry.Sub(start); got != tt.want {
				t.Errorf("retry %s after the attempt started, want %s", got, tt.want)
			}
		})
	}
}

func TestRenewalTrackerDone(t *testing.T) {
	r := &renewalTracker{}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r.started("a.example", t0)
	r.failed("a.example", t0, time.Minute)
	r.done("a.example")
	later := t0.Add(time.Hour)
	if got := r.started("a.example", later); !got.Equal(later) {
		t.Errorf("after a success the next renewal started at %s, want %s", got, later)
	}
	if _, retry := r.failed("a.example", later, time.Second); retry.Sub(later) != renewalBackoff(1) {
		t.Errorf("after a success the first failure retries in %s, want %s", retry.Sub(later), renewalBackoff(1))
	}
}
