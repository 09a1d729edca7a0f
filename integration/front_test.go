package integration

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// front is a round-robin TCP proxy, standing in for the load balancer in
// front of several Caddy instances: each new connection goes to the next
// target.
type front struct {
	ln      net.Listener
	targets []string
	next    atomic.Uint64
	wg      sync.WaitGroup

	mu     sync.Mutex
	hits   map[string]int // connections per target
	active map[net.Conn]bool
}

// startFront listens on addr and forwards every connection to the targets
// in turn. It closes when the test ends.
func startFront(t *testing.T, addr string, targets ...string) *front {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("front on %s: %v", addr, err)
	}
	f := &front{ln: ln, targets: targets, hits: map[string]int{}, active: map[net.Conn]bool{}}
	f.wg.Add(1)
	go f.serve()
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		for c := range f.active {
			c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

func (f *front) serve() {
	defer f.wg.Done()
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		in, err := f.ln.Accept()
		if err != nil {
			return
		}
		target := f.targets[f.next.Add(1)%uint64(len(f.targets))]
		f.mu.Lock()
		f.hits[target]++
		f.active[in] = true
		f.mu.Unlock()
		conns.Add(1)
		go func() {
			defer conns.Done()
			defer func() {
				f.mu.Lock()
				delete(f.active, in)
				f.mu.Unlock()
				in.Close()
			}()
			out, err := net.Dial("tcp", target)
			if err != nil {
				return
			}
			defer out.Close()
			done := make(chan struct{}, 2)
			go func() { _, _ = io.Copy(out, in); done <- struct{}{} }()
			go func() { _, _ = io.Copy(in, out); done <- struct{}{} }()
			<-done
		}()
	}
}

// Hits returns how many connections went to each target.
func (f *front) Hits() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]int, len(f.hits))
	for k, v := range f.hits {
		out[k] = v
	}
	return out
}
