package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

// changesChannel is the NOTIFY channel of store.Changes (channels are per
// database, so coordinators of another database do not hear them).
const changesChannel = "cleanroom_changes"

// Publish sends key to every coordinator listening on this database.
func (s *Store) Publish(ctx context.Context, key string) error {
	if _, err := s.pool.Exec(ctx, `SELECT pg_notify($1, $2)`, changesChannel, key); err != nil {
		return fmt.Errorf("publishing change %s: %w", key, err)
	}
	return nil
}

// Listen LISTENs on a connection of its own (not the pool's: it stays
// busy waiting) and calls fn with each key published, until ctx ends.
// When the connection breaks (a PostgreSQL restart, a failover, a network
// cut) it connects again, backing off from 100 ms to 5 s, and then
// delivers store.ChangeAll: what was published meanwhile is lost, so every
// waiter re-reads. It returns only ctx's error.
func (s *Store) Listen(ctx context.Context, fn func(key string)) error {
	backoff := listenBackoff{min: 100 * time.Millisecond, max: 5 * time.Second}
	for connected := false; ; {
		err := s.listenOnce(ctx, func() {
			if connected {
				fn(store.ChangeAll)
			}
			connected = true
			backoff.reset()
		}, fn)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		_ = err // the next attempt says whether it persists
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff.next()):
		}
	}
}

// listenOnce connects, LISTENs, calls ready, and delivers notifications
// until the connection fails or ctx ends.
func (s *Store) listenOnce(ctx context.Context, ready func(), fn func(string)) error {
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig.Copy())
	if err != nil {
		return fmt.Errorf("connecting to listen: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, `LISTEN `+changesChannel); err != nil {
		return fmt.Errorf("listening: %w", err)
	}
	ready()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return fmt.Errorf("waiting for a change: %w", err)
		}
		fn(n.Payload)
	}
}

// listenBackoff doubles the wait between reconnections up to max.
type listenBackoff struct{ min, max, cur time.Duration }

func (b *listenBackoff) reset() { b.cur = 0 }

func (b *listenBackoff) next() time.Duration {
	b.cur = min(max(2*b.cur, b.min), b.max)
	return b.cur
}
