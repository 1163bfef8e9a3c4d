package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

// hear listens on l, publishes key on p until l hears it (a listener may
// need a moment to start; delivery is a hint, so a publish before it is
// simply lost), then stops listening and checks Listen returns ctx's error.
func hear(t *testing.T, p, l store.Store, key string) {
	t.Helper()
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	heard := make(chan string, 100)
	done := make(chan error, 1)
	go func() {
		done <- l.Listen(lctx, func(k string) {
			select {
			case heard <- k:
			default:
			}
		})
	}()
	deadline := time.After(10 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for found := false; !found; {
		must(t, p.Publish(ctx, key))
		select {
		case k := <-heard:
			found = k == key
		case <-tick.C:
		case <-deadline:
			t.Fatalf("%s not heard within 10s", key)
		case err := <-done:
			t.Fatalf("Listen returned before its context ended: %v", err)
		}
	}
	stop()
	select {
	case err := <-done:
		if err != context.Canceled {
			t.Errorf("Listen returned %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Listen did not return within 5s of its context ending")
	}
}

func testChangesSameHandle(t *testing.T, s store.Store) {
	hear(t, s, s, store.ChangeQueue)
	hear(t, s, s, store.ChangeLog("j-1"))
}

// A publish on one handle (coordinator A) is heard by a listener on
// another handle on the same database (coordinator B).
func testChangesAcrossHandles(t *testing.T, a, b store.Store) {
	hear(t, a, b, store.ChangeJob("j-1"))
	hear(t, b, a, store.ChangeQueue)
}
