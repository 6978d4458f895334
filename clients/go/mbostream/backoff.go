package mbostream

// Retry room: exponential backoff with full jitter for reconnecting streams.

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// Backoff is the delay policy between reconnection attempts: the delay before attempt n (0-based)
// is uniform in [0, min(Cap, Base·Factorⁿ)]. Full jitter ("Exponential Backoff And Jitter", AWS
// architecture blog) spreads the reconnects of many clients after a server restart instead of
// having them arrive in waves. The count of attempts starts over once a stream delivers data.
//
// The zero value means DefaultBackoff.
type Backoff struct {
	// Base is the upper bound of the first delay.
	Base time.Duration
	// Factor is the growth of the upper bound per failed attempt (at least 1).
	Factor float64
	// Cap is the largest upper bound.
	Cap time.Duration
	// MaxAttempts ends the stream with the last error once this many reconnections in a row
	// failed; 0 retries until the context ends.
	MaxAttempts int
}

// DefaultBackoff is the policy of a zero Backoff: 100 ms doubling up to 5 s, retrying forever.
var DefaultBackoff = Backoff{Base: 100 * time.Millisecond, Factor: 2, Cap: 5 * time.Second}

func (b Backoff) orDefault() Backoff {
	if b == (Backoff{}) {
		return DefaultBackoff
	}
	return b
}

// Validate reports a Backoff that cannot be used.
func (b Backoff) Validate() error {
	b = b.orDefault()
	switch {
	case b.Base <= 0:
		return &ConfigError{"Backoff.Base", fmt.Sprintf("must be > 0, got %s", b.Base)}
	case !(b.Factor >= 1):
		return &ConfigError{"Backoff.Factor", fmt.Sprintf("must be >= 1, got %g", b.Factor)}
	case b.Cap < b.Base:
		return &ConfigError{"Backoff.Cap", fmt.Sprintf("must be >= Base (%s), got %s", b.Base, b.Cap)}
	case b.MaxAttempts < 0:
		return &ConfigError{"Backoff.MaxAttempts", fmt.Sprintf("must be >= 0, got %d", b.MaxAttempts)}
	}
	return nil
}

// Bound is the upper bound of the delay before attempt n (0-based).
func (b Backoff) Bound(attempt int) time.Duration {
	b = b.orDefault()
	bound := float64(b.Base) * math.Pow(b.Factor, float64(min(attempt, 64)))
	return time.Duration(min(bound, float64(b.Cap)))
}

// Delay draws the delay before attempt n (0-based) from r.
func (b Backoff) Delay(attempt int, r *rand.Rand) time.Duration {
	return time.Duration(r.Int64N(int64(b.Bound(attempt)) + 1))
}

// retrier counts one stream's consecutive failed attempts.
type retrier struct {
	policy  Backoff
	attempt int
	rng     *rand.Rand
}

func newRetrier(policy Backoff) *retrier {
	return &retrier{policy: policy.orDefault(), rng: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))}
}

// exhausted reports whether MaxAttempts failed attempts were made in a row.
func (r *retrier) exhausted() bool {
	return r.policy.MaxAttempts > 0 && r.attempt >= r.policy.MaxAttempts
}

// wait sleeps the next delay, counting one failed attempt; false when ctx ended first.
func (r *retrier) wait(ctx context.Context) bool {
	delay := r.policy.Delay(r.attempt, r.rng)
	r.attempt++
	timer := time.NewTimer(delay)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// reset forgets the failed attempts (a connection delivered data).
func (r *retrier) reset() { r.attempt = 0 }
