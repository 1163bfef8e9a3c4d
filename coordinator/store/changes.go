package store

import (
	"context"
	"sync"
)

// LocalChanges is Changes within one process, for a backend that only one
// coordinator uses at a time (SQLite): Publish calls every listener at
// once. The zero value is ready to use.
type LocalChanges struct {
	mu        sync.Mutex
	next      int
	listeners map[int]func(string)
}

// Publish calls every current listener's fn with key.
func (c *LocalChanges) Publish(_ context.Context, key string) error {
	c.mu.Lock()
	fns := make([]func(string), 0, len(c.listeners))
	for _, fn := range c.listeners {
		fns = append(fns, fn)
	}
	c.mu.Unlock()
	for _, fn := range fns {
		fn(key)
	}
	return nil
}

// Listen registers fn until ctx ends.
func (c *LocalChanges) Listen(ctx context.Context, fn func(key string)) error {
	c.mu.Lock()
	if c.listeners == nil {
		c.listeners = map[int]func(string){}
	}
	id := c.next
	c.next++
	c.listeners[id] = fn
	c.mu.Unlock()
	<-ctx.Done()
	c.mu.Lock()
	delete(c.listeners, id)
	c.mu.Unlock()
	return ctx.Err()
}
