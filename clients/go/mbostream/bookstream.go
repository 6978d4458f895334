package mbostream

// Book stream room: StreamBook, reconnecting by itself; each update is whole books, never deltas.

import (
	"context"
	"iter"
	"log/slog"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"

	v1 "github.com/mbostream/mbostream/clients/go/gen/mbostream/v1"
)

// BookStreamRequest selects what StreamBook delivers and how it recovers.
type BookStreamRequest struct {
	// Instruments to stream; empty streams every book, including ones first seen later.
	Instruments []Instrument
	// Depth is the most levels per side; 0 sends full books.
	Depth uint32
	// MaxUpdatesPerSecond caps the messages per second for each book; 0 sends every refresh in
	// which the book changed.
	MaxUpdatesPerSecond float64
	// IncludeOrders lists each level's orders in queue-priority order.
	IncludeOrders bool
	// CombineBooks asks for one message per refresh carrying every book that changed, instead of
	// one message per book (after each book's first message).
	CombineBooks bool
	// Backoff paces reconnections (zero: DefaultBackoff).
	Backoff Backoff
	// NoReconnect ends the stream at the first error instead of reconnecting.
	NoReconnect bool
	// ReuseUpdates decodes every message into the same memory, as bufio.Scanner's Bytes does: the
	// BookUpdate that Update returns, its Books and their levels are valid only until the next call
	// to Next, which overwrites them (proto.Clone what you keep). A 10-level book message then
	// decodes with 2 allocations instead of 36, in a third of the time (clients/go/README.md).
	ReuseUpdates bool
}

// Message is the StreamBookRequest message that StreamBook sends for r (for a caller that sends
// it by other means, as mbostream-load's frame reader does).
func (r BookStreamRequest) Message() *v1.StreamBookRequest {
	return &v1.StreamBookRequest{
		Instruments:         selectors(r.Instruments),
		Depth:               r.Depth,
		MaxUpdatesPerSecond: r.MaxUpdatesPerSecond,
		IncludeOrders:       r.IncludeOrders,
		CombineBooks:        r.CombineBooks,
	}
}

// BookUpdate is one StreamBook message: one or more whole top-N books, each consistent (taken at
// an F_LAST boundary).
type BookUpdate struct {
	// Books holds the message's book, or with CombineBooks every book that changed since the
	// previous message.
	Books []*v1.BookSnapshot
	// Snapshot is true for the first message of each book on a connection.
	Snapshot bool
	// TsOut is the server's publication time (with several books, that of the oldest), ns since
	// the UNIX epoch.
	TsOut uint64
	// Conflated is how many book states the server skipped for this client since the previous
	// message for the same books.
	Conflated uint64
	// Epoch is the server run the books' replay_sequence belongs to.
	Epoch string
	// Reconnected marks the first message after the stream reconnected: every selected book comes
	// again as a snapshot. If Epoch changed, the server restarted, and books it no longer has will
	// not come again.
	Reconnected bool
}

// BookStreamStats is what a book stream went through since it started.
type BookStreamStats struct {
	// Connections is the number of calls opened, the first included.
	Connections int
	// EpochChanges counts messages whose epoch differed from the previous message's.
	EpochChanges int
	// Messages counts the updates handed out.
	Messages uint64
}

// BookStream is a StreamBook subscription that reconnects by itself; read it with Next and
// Update (or All). Next, Update and Err belong to one goroutine; Stats and Close may be called
// from any.
type BookStream struct {
	client *Client
	req    *v1.StreamBookRequest
	opts   BookStreamRequest
	ctx    context.Context
	cancel context.CancelFunc
	retry  *retrier
	logger *slog.Logger
	closed atomic.Bool

	call        grpc.ServerStreamingClient[v1.StreamBookResponse]
	hangUp      context.CancelFunc
	reconnected bool
	epoch       string

	update *BookUpdate
	err    error
	done   bool

	// With ReuseUpdates: the message every Recv decodes into, and the update and books slice
	// Next hands out, all overwritten by the next message.
	reused       *v1.StreamBookResponse
	reusedUpdate BookUpdate
	reusedBooks  []*v1.BookSnapshot

	mu    sync.Mutex
	stats BookStreamStats
}

// StreamBook opens a subscription to conflated top-N book updates: a snapshot of each selected
// book first, then the latest consistent book at each server refresh in which it changed. The
// stream lives until ctx ends, Close is called, or an error it cannot recover from (a wrong
// selection, a message beyond WithMaxMessageSize, any error with NoReconnect, or
// Backoff.MaxAttempts failed reconnections).
func (c *Client) StreamBook(ctx context.Context, req BookStreamRequest) *BookStream {
	ctx, cancel := context.WithCancel(ctx)
	s := &BookStream{
		client: c,
		req:    req.Message(),
		opts:   req,
		ctx:    ctx,
		cancel: cancel,
		retry:  newRetrier(req.Backoff),
		logger: c.settings.logger.With("stream", "StreamBook"),
	}
	if err := req.Backoff.Validate(); err != nil {
		s.finish(err)
	}
	return s
}

// Next waits for the next update and reports whether there is one; false means the stream ended
// (see Err).
func (s *BookStream) Next() bool {
	s.update = nil
	for !s.done {
		if s.ctx.Err() != nil {
			s.finish(s.contextErr())
			break
		}
		if s.call == nil && !s.open() {
			continue
		}
		m, err := s.receive()
		if err != nil {
			s.hangUpCall()
			s.recover(err)
			continue
		}
		s.retry.reset()
		u := s.updateOf(m)
		s.reconnected = false
		s.mu.Lock()
		if s.epoch != "" && u.Epoch != "" && u.Epoch != s.epoch {
			s.stats.EpochChanges++
		}
		s.stats.Messages++
		s.mu.Unlock()
		if u.Epoch != "" {
			s.epoch = u.Epoch
		}
		s.update = u
		return true
	}
	return false
}

// receive reads the call's next message: a new one, or with ReuseUpdates the stream's own, reset
// (its slices and levels kept for the decode to fill again).
func (s *BookStream) receive() (*v1.StreamBookResponse, error) {
	if !s.opts.ReuseUpdates {
		return s.call.Recv()
	}
	if s.reused == nil {
		s.reused = &v1.StreamBookResponse{}
	}
	// The codec empties it with ResetVT before decoding (codec.go, reusable).
	if err := s.call.RecvMsg(reusedBookResponse{s.reused}); err != nil {
		return nil, err
	}
	return s.reused, nil
}

// updateOf is m as the update Next hands out. A reused message's Books are copied to a slice of
// the stream's own: appending m's single Book to m's slice would leave it in the slice's spare
// room, where the next decode would take it for an element to fill while the pool hands it out.
func (s *BookStream) updateOf(m *v1.StreamBookResponse) *BookUpdate {
	u, books := &BookUpdate{}, m.GetBooks()
	if s.opts.ReuseUpdates {
		u, books = &s.reusedUpdate, append(s.reusedBooks[:0], books...)
	}
	if m.GetBook() != nil {
		books = append(books, m.GetBook())
	}
	if s.opts.ReuseUpdates {
		s.reusedBooks = books
	}
	*u = BookUpdate{
		Books:       books,
		Snapshot:    m.GetIsSnapshot(),
		TsOut:       m.GetTsOut(),
		Conflated:   m.GetConflated(),
		Epoch:       m.GetEpoch(),
		Reconnected: s.reconnected,
	}
	return u
}

// Update is the update the last successful Next delivered.
func (s *BookStream) Update() *BookUpdate { return s.update }

// Err is why the stream ended: nil after Close, the context's error when ctx ended, otherwise
// the error it could not recover from.
func (s *BookStream) Err() error { return s.err }

// All iterates over the updates, then yields the stream's error, if any, once; breaking out of
// the loop closes the stream.
func (s *BookStream) All() iter.Seq2[*BookUpdate, error] {
	return allOf(s.Next, func() *BookUpdate { return s.update }, s.Err, s.Close)
}

// Close ends the stream; a Next in progress returns false.
func (s *BookStream) Close() {
	s.closed.Store(true)
	s.cancel()
}

// Stats is a copy of the stream's counters.
func (s *BookStream) Stats() BookStreamStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

func (s *BookStream) open() bool {
	s.mu.Lock()
	s.stats.Connections++
	s.reconnected = s.stats.Connections > 1
	s.mu.Unlock()
	ctx, hangUp := context.WithCancel(s.ctx)
	call, err := s.client.market.StreamBook(ctx, s.req)
	if err != nil {
		hangUp()
		s.recover(err)
		return false
	}
	s.call, s.hangUp = call, hangUp
	return true
}

func (s *BookStream) hangUpCall() {
	if s.hangUp != nil {
		s.hangUp()
	}
	s.call, s.hangUp = nil, nil
}

// recover ends the stream or waits a backoff delay before the next connection.
func (s *BookStream) recover(callErr error) {
	if s.ctx.Err() != nil {
		s.finish(s.contextErr())
		return
	}
	if s.client.closed.Load() {
		s.finish(ErrClientClosed)
		return
	}
	err := errorFromStatus("StreamBook", callErr)
	if isPermanent(err) || s.opts.NoReconnect || s.retry.exhausted() {
		s.finish(err)
		return
	}
	s.logger.Info("stream ended; reconnecting", "error", err)
	if !s.retry.wait(s.ctx) {
		s.finish(s.contextErr())
	}
}

func (s *BookStream) finish(err error) {
	s.hangUpCall()
	s.done, s.err = true, err
	s.cancel()
}

func (s *BookStream) contextErr() error {
	if s.closed.Load() {
		return nil
	}
	return context.Cause(s.ctx)
}
