// Package testevents is an event handler module for the integration tests
// (events.handlers.testrecorder): it appends every event it is given to a
// file, one JSON object a line, so that a test can read what an operator's
// `events { on ... }` handler would have seen.
package testevents

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(Recorder{})
}

// Recorder appends events to File.
type Recorder struct {
	// File is where events are appended.
	File string `json:"file"`
	// Delay is how long each event is held before it is recorded, to
	// stand for a slow handler (an exec). Default 0.
	Delay caddy.Duration `json:"delay,omitempty"`
}

// Record is one recorded event.
type Record struct {
	Name   string         `json:"name"`
	Origin string         `json:"origin"`
	Data   map[string]any `json:"data"`
}

// CaddyModule returns the Caddy module information.
func (Recorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "events.handlers.testrecorder",
		New: func() caddy.Module { return new(Recorder) },
	}
}

var mu sync.Mutex

// Handle appends the event to the file.
func (r *Recorder) Handle(_ context.Context, e caddy.Event) error {
	time.Sleep(time.Duration(r.Delay))
	rec := Record{Name: e.Name(), Data: map[string]any{}}
	if o := e.Origin(); o != nil {
		rec.Origin = string(o.CaddyModule().ID)
	}
	for k, v := range e.Data {
		if err, ok := v.(error); ok {
			v = err.Error()
		}
		rec.Data[k] = v
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encoding event: %w", err)
	}
	mu.Lock()
	defer mu.Unlock()
	f, err := os.OpenFile(r.File, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.Write(append(b, '\n'))
	return err
}
