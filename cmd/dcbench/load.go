package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// handshakeTimeout bounds one TCP connect plus TLS handshake.
const handshakeTimeout = 5 * time.Second

// maxSlice is the longest stretch one phase runs before the next gets its
// turn; interleaving spreads the background load of a shared machine over
// all phases alike.
const maxSlice = 500 * time.Millisecond

// handshake is the outcome of one handshake.
type handshake struct {
	took  time.Duration // TCP connect + TLS handshake
	curve tls.CurveID
	wrong string // why the certificate is not the expected one; "" if it is
}

// dialHandshake makes a new TCP connection to addr and a full TLS 1.3
// handshake with server name sni, checks that the leaf has the serial
// number want and names sni, and closes the connection with a reset (no
// TIME_WAIT left behind, so that 100,000s of connections do not run out of
// ports).
func dialHandshake(ctx context.Context, addr, sni string, want int64) (handshake, error) {
	var hs handshake
	start := time.Now()
	d := net.Dialer{Timeout: handshakeTimeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return hs, err
	}
	defer func() {
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		conn.Close()
	}()
	_ = conn.SetDeadline(start.Add(handshakeTimeout))
	tc := tls.Client(conn, &tls.Config{
		ServerName:         sni,
		InsecureSkipVerify: true, // the leaf is checked by serial number below
		ClientSessionCache: nil,  // no resumption: every handshake is full
		MinVersion:         tls.VersionTLS13,
	})
	if err := tc.HandshakeContext(ctx); err != nil {
		return hs, err
	}
	hs.took = time.Since(start)
	cs := tc.ConnectionState()
	hs.curve = cs.CurveID
	switch leaf := cs.PeerCertificates[0]; {
	case cs.DidResume:
		hs.wrong = "session resumed"
	case !leaf.SerialNumber.IsInt64() || leaf.SerialNumber.Int64() != want:
		hs.wrong = fmt.Sprintf("for %s got serial %s (names %v), want %d", sni, leaf.SerialNumber, leaf.DNSNames, want)
	case len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != sni:
		hs.wrong = fmt.Sprintf("for %s got a certificate for %v", sni, leaf.DNSNames)
	}
	return hs, nil
}

// target is a server under load and how each handshake picks its name.
type target struct {
	label string
	addr  string
	sites []*site // one name: a single site; random: all of them
	zipf  *zipf   // if set, names are drawn from it, else uniformly
	pid   int     // the server's process, for its CPU time
	pids  []int   // the Caddy processes of the benchmark, for CPU accounting
}

func (t *target) pick(r *rand.Rand) *site {
	switch {
	case len(t.sites) == 1:
		return t.sites[0]
	case t.zipf != nil:
		return t.sites[t.zipf.draw(r)]
	}
	return t.sites[r.IntN(len(t.sites))]
}

// zipf draws ranks 0..n-1 with P(k) proportional to 1/(k+1)^s, the
// popularity of real traffic over many domains (s about 1): a few names
// get most handshakes, the long tail a few each. Rank 0 is the first
// site, the one of the one-SNI phase.
type zipf struct {
	s   float64
	cdf []float64
}

func newZipf(n int, s float64) *zipf {
	cdf := make([]float64, n)
	sum := 0.0
	for k := range n {
		sum += math.Pow(float64(k+1), -s)
		cdf[k] = sum
	}
	for k := range cdf {
		cdf[k] /= sum
	}
	return &zipf{s: s, cdf: cdf}
}

func (z *zipf) draw(r *rand.Rand) int {
	i, _ := slices.BinarySearch(z.cdf, r.Float64())
	return min(i, len(z.cdf)-1)
}

// share returns the share of draws that fall on the most popular
// fraction of the ranks (at least one).
func (z *zipf) share(fraction float64) float64 {
	k := max(1, int(fraction*float64(len(z.cdf))))
	return z.cdf[k-1]
}

// loadStats accumulates the handshakes of one server in one phase.
type loadStats struct {
	Handshakes int           `json:"handshakes"`
	Errors     int           `json:"errors"`
	WrongCerts int           `json:"wrong_certificates"`
	Elapsed    time.Duration `json:"elapsed_ns"`
	FirstError string        `json:"first_error,omitempty"`
	Curve      string        `json:"key_exchange,omitempty"`
	// OthersCPU is the share of the machine's CPU that processes other
	// than dcbench and its Caddys used meanwhile (0 to 1).
	OthersCPU float64 `json:"others_cpu_share"`
	// ServerCPU is the CPU time (user + system) the server used, and
	// ClientCPU the time dcbench itself used (the load client, mostly).
	ServerCPU time.Duration `json:"server_cpu_ns"`
	ClientCPU time.Duration `json:"client_cpu_ns"`
	// SliceRates are the handshakes per second of each measured slice, in
	// the order of the rounds, so that two servers' slices of one round
	// can be compared pairwise.
	SliceRates []float64 `json:"slice_rates,omitempty"`

	lat []time.Duration
}

// cpuPerHandshake is the server's CPU time per handshake in microseconds,
// or 0 if unknown.
func (s *loadStats) cpuPerHandshake() float64 {
	return perHandshake(s.ServerCPU, s.Handshakes)
}

// clientCPUPerHandshake is the same for the load client.
func (s *loadStats) clientCPUPerHandshake() float64 {
	return perHandshake(s.ClientCPU, s.Handshakes)
}

func perHandshake(d time.Duration, n int) float64 {
	if n == 0 {
		return 0
	}
	return float64(d) / float64(time.Microsecond) / float64(n)
}

// ticks converts clock ticks to a duration.
func ticks(n uint64) time.Duration {
	return time.Duration(n) * time.Second / clockTicks
}

func (s *loadStats) rate() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Handshakes) / s.Elapsed.Seconds()
}

// percentile returns the p-th percentile (0 < p < 100) of the latencies,
// nearest rank, in milliseconds.
func (s *loadStats) percentile(p float64) float64 {
	return percentileMS(s.lat, p)
}

func (s *loadStats) merge(o *loadStats) {
	if e := s.Elapsed + o.Elapsed; e > 0 {
		s.OthersCPU = (s.OthersCPU*float64(s.Elapsed) + o.OthersCPU*float64(o.Elapsed)) / float64(e)
	}
	s.Handshakes += o.Handshakes
	s.ServerCPU += o.ServerCPU
	s.ClientCPU += o.ClientCPU
	s.Errors += o.Errors
	s.WrongCerts += o.WrongCerts
	s.Elapsed += o.Elapsed
	if s.FirstError == "" {
		s.FirstError = o.FirstError
	}
	if s.Curve == "" {
		s.Curve = o.Curve
	}
	s.lat = append(s.lat, o.lat...)
}

// pairedRatio compares two servers' slices of the same rounds: it returns
// the median of the per-round ratios a/b and the quartiles around it, and
// the number of pairs. A slice of background load then tips one pair, not
// the median.
func pairedRatio(a, b *loadStats) (median, q1, q3 float64, n int) {
	var rs []float64
	for i := range min(len(a.SliceRates), len(b.SliceRates)) {
		if b.SliceRates[i] > 0 {
			rs = append(rs, a.SliceRates[i]/b.SliceRates[i])
		}
	}
	if len(rs) == 0 {
		return 0, 0, 0, 0
	}
	slices.Sort(rs)
	at := func(q float64) float64 {
		// linear interpolation between the closest ranks
		x := q * float64(len(rs)-1)
		i := int(x)
		if i+1 >= len(rs) {
			return rs[len(rs)-1]
		}
		return rs[i] + (x-float64(i))*(rs[i+1]-rs[i])
	}
	return at(0.5), at(0.25), at(0.75), len(rs)
}

// percentileMS returns the p-th percentile of ds in milliseconds (nearest
// rank); ds is sorted in place. It is 0 for no samples.
func percentileMS(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	i := int(float64(len(ds))*p/100+0.999999) - 1
	i = max(0, min(i, len(ds)-1))
	return float64(ds[i]) / float64(time.Millisecond)
}

// runSlice keeps concurrency handshakes in flight against t for d. It
// starts none after d, and counts the ones in flight at d when they
// complete: the elapsed time runs until the last one did.
func runSlice(ctx context.Context, t *target, concurrency int, d time.Duration, seed uint64) *loadStats {
	var (
		mu  sync.Mutex
		out = &loadStats{}
		wg  sync.WaitGroup
	)
	cpu0, server0, client0 := readCPU(t.pids), procTicks(t.pid), procTicks(os.Getpid())
	start := time.Now()
	end := start.Add(d)
	for w := range concurrency {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(seed, uint64(w)))
			local := &loadStats{}
			for time.Now().Before(end) && ctx.Err() == nil {
				s := t.pick(r)
				hs, err := dialHandshake(ctx, t.addr, s.name, s.serial)
				switch {
				case ctx.Err() != nil:
					// interrupted: not the server's fault
				case err != nil:
					local.Errors++
					if local.FirstError == "" {
						local.FirstError = err.Error()
					}
					sleep(ctx, time.Millisecond) // don't spin on a dead server
				case hs.wrong != "":
					local.WrongCerts++
					if local.FirstError == "" {
						local.FirstError = "wrong certificate: " + hs.wrong
					}
				default:
					local.Handshakes++
					local.lat = append(local.lat, hs.took)
					if local.Curve == "" {
						local.Curve = hs.curve.String()
					}
				}
			}
			mu.Lock()
			out.merge(local)
			mu.Unlock()
		})
	}
	wg.Wait()
	out.Elapsed = time.Since(start)
	out.OthersCPU = othersShare(cpu0, readCPU(t.pids))
	if server0 > 0 {
		out.ServerCPU = ticks(procTicks(t.pid) - server0)
	}
	out.ClientCPU = ticks(procTicks(os.Getpid()) - client0)
	return out
}

// measure runs a throughput phase of duration d against each target,
// after a warm-up, in interleaved slices of at most maxSlice, and returns
// the stats of each target.
func measure(ctx context.Context, targets []*target, concurrency int, d time.Duration) ([]*loadStats, error) {
	out := make([]*loadStats, len(targets))
	warm := min(d/5, time.Second)
	for i, t := range targets {
		// the warm-up's handshakes are not counted, its failures are
		w := runSlice(ctx, t, concurrency, warm, uint64(1000+i))
		out[i] = &loadStats{Errors: w.Errors, WrongCerts: w.WrongCerts, FirstError: w.FirstError}
	}
	slice := min(d, maxSlice)
	for done, round := time.Duration(0), 0; done < d; done, round = done+slice, round+1 {
		sd := min(slice, d-done)
		// every other round runs the targets in reverse order (ABBA), so
		// that going first after a switch, or last before it, is no
		// target's steady advantage
		for k := range targets {
			i := k
			if round%2 == 1 {
				i = len(targets) - 1 - k
			}
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			st := runSlice(ctx, targets[i], concurrency, sd, uint64(round*len(targets)+i))
			out[i].merge(st)
			out[i].SliceRates = append(out[i].SliceRates, st.rate())
		}
	}
	return out, ctx.Err()
}

// waitServed makes handshakes for s until one gets s's certificate, and
// returns when that handshake completed. A failed or refused handshake is
// retried after every; it gives up after timeout.
func waitServed(ctx context.Context, addr string, s *site, every, timeout time.Duration) (time.Time, int, error) {
	deadline := time.Now().Add(timeout)
	var last error
	for attempts := 1; time.Now().Before(deadline); attempts++ {
		if err := ctx.Err(); err != nil {
			return time.Time{}, attempts, err
		}
		hs, err := dialHandshake(ctx, addr, s.name, s.serial)
		switch {
		case err == nil && hs.wrong == "":
			return time.Now(), attempts, nil
		case err == nil:
			last = errors.New("wrong certificate: " + hs.wrong)
		default:
			last = err
		}
		if every > 0 {
			sleep(ctx, every)
		}
	}
	return time.Time{}, 0, fmt.Errorf("%s not served after %v (last: %v): %w", s.name, timeout, last, errTimeout)
}

// prime makes one handshake for each site, with concurrency handshakes in
// flight, so that the measured phases see each server as it is once it has
// served every name (ours' uploads, cached when they are stored, enter
// Caddy's cache as hot certificates on their first handshake; stock loads
// every certificate into it up front). It
// fails on an error or a wrong certificate.
func prime(ctx context.Context, addr string, sites []*site, concurrency int) error {
	var next atomic.Int64
	errs := make(chan error, concurrency)
	for range concurrency {
		go func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(sites) || ctx.Err() != nil {
					errs <- ctx.Err()
					return
				}
				s := sites[i]
				hs, err := dialHandshake(ctx, addr, s.name, s.serial)
				if err == nil && hs.wrong != "" {
					err = errors.New("wrong certificate: " + hs.wrong)
				}
				if err != nil {
					next.Store(int64(len(sites))) // stop the others
					errs <- fmt.Errorf("priming %s: %w", s.name, err)
					return
				}
			}
		}()
	}
	var first error
	for range concurrency {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}
