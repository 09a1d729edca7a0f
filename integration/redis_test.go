package integration

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// startRedis runs a redis-server (from the system's packages) on a free
// loopback port for the test, with nothing persisted, and returns its
// address. A missing redis-server fails the test: .ci/run installs it.
func startRedis(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server is required by this test (Debian package redis-server; .ci/run installs it): %v", err)
	}
	port := freePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", t.TempDir())
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting redis-server: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("redis-server log:\n%s", log.String())
		}
	})
	client := redis.NewClient(&redis.Options{Addr: addr})
	defer client.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := client.Ping(ctx).Err()
		cancel()
		if err == nil {
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on %s did not answer: %v\n%s", addr, err, log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var (
	testCaddyOnce sync.Once
	testCaddyPath string
	testCaddyErr  error
)

// testCaddyBin builds, once per run, Caddy with the plugin and the tests'
// own modules (./testcaddy: the Redis storage).
func testCaddyBin(t *testing.T) string {
	t.Helper()
	testCaddyOnce.Do(func() {
		testCaddyPath = filepath.Join(suiteDir, "testcaddy")
		start := time.Now()
		out, err := exec.Command("go", "build", "-o", testCaddyPath, "./testcaddy").CombinedOutput()
		if err != nil {
			testCaddyErr = fmt.Errorf("building ./testcaddy: %v\n%s", err, out)
			return
		}
		t.Logf("built the test Caddy in %s", time.Since(start).Round(time.Millisecond))
	})
	if testCaddyErr != nil {
		t.Fatal(testCaddyErr)
	}
	return testCaddyPath
}
