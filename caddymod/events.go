package caddymod

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"go.uber.org/zap"

	"github.com/domaincerts/caddy-domaincerts/domainstore"
)

// Events go through Caddy's events app, with the domaincerts app as their
// origin, so that `events { on <name> ... }` handlers see them. Those the
// API and the jobs send are queued and handed to the events app by one
// goroutine: a slow handler (an exec) never holds up an API call, and a
// full queue drops events (counted and logged) rather than wait.

// eventQueueSize bounds the events waiting for their handlers.
const eventQueueSize = 4096

// eventTarget is the events app of the running config, and its app.
type eventTarget struct {
	events *caddyevents.App
	ctx    caddy.Context // the domaincerts app's: the events' origin
	log    *zap.Logger
}

type queuedEvent struct {
	name string
	data map[string]any
}

var (
	eventsTo      atomic.Pointer[eventTarget] // the running config's; nil when none
	eventQueue    = make(chan queuedEvent, eventQueueSize)
	eventsStart   sync.Once
	eventsDropped atomic.Uint64
)

// setEventTarget makes t receive the events; the newest config wins
// during a reload.
func setEventTarget(t *eventTarget) {
	eventsTo.Store(t)
	eventsStart.Do(func() { go dispatchEvents() })
}

// clearEventTarget stops sending events to t, unless a newer config took
// over already.
func clearEventTarget(t *eventTarget) { eventsTo.CompareAndSwap(t, nil) }

func dispatchEvents() {
	for ev := range eventQueue {
		if t := eventsTo.Load(); t != nil {
			t.events.Emit(t.ctx, ev.name, ev.data)
		}
	}
}

// emitEvent queues an event; it never blocks.
func emitEvent(name string, data map[string]any) {
	t := eventsTo.Load()
	if t == nil {
		return
	}
	select {
	case eventQueue <- queuedEvent{name: name, data: data}:
	default:
		if n := eventsDropped.Add(1); n == 1 || n%1000 == 0 {
			t.log.Warn("event queue full; events dropped (are event handlers slow?)",
				zap.String("event", name), zap.Uint64("dropped_total", n))
		}
	}
}

// emitEventWait queues an event once the queue is less than half full,
// waiting until stop is closed; it reports whether the event was queued.
// It is for background work that sends many events at once (the expiry
// announcements), never for an API call or a handshake, and it leaves
// half the queue to their events.
func emitEventWait(stop <-chan struct{}, name string, data map[string]any) bool {
	for {
		if eventsTo.Load() == nil {
			return true
		}
		if len(eventQueue) < eventQueueSize/2 {
			select {
			case eventQueue <- queuedEvent{name: name, data: data}:
				return true
			default:
			}
		}
		select {
		case <-stop:
			return false
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// emitNow sends an event to its handlers and waits for them: for the
// events of certificate jobs, whose cert_obtaining handlers may abort the
// attempt, as they can for Caddy's own certificates.
func emitNow(ctx context.Context, name string, data map[string]any) error {
	t := eventsTo.Load()
	if t == nil {
		return nil
	}
	cctx := t.ctx
	cctx.Context = ctx
	return t.events.Emit(cctx, name, data).Aborted
}

// eventTime formats a time for event data: RFC 3339 in UTC, as the API.
func eventTime(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func emitDomain(name string, d *domainstore.Domain) {
	emitEvent(name, map[string]any{"domain_id": d.ID, "domain": d.Domain})
}

func emitCertificate(name string, c *domainstore.Certificate) {
	emitEvent(name, map[string]any{
		"certificate_id": c.ID, "subject_common_name": c.SubjectCommonName, "not_after": eventTime(c.NotAfter),
	})
}
