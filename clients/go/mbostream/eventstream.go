package mbostream

// Follow room: a StreamEvents subscription that survives disconnects without losing a record.
//
// The stream remembers the replay position and epoch of the last live record it handed out. When
// the connection breaks it reconnects with exponential backoff and full jitter and resumes with
// start_after_sequence and resume_epoch, so nothing is handed out twice or skipped. When resuming
// is impossible — the server no longer buffers the position (OUT_OF_RANGE), it runs another epoch
// (it restarted: positions of two runs are unrelated; FAILED_PRECONDITION, or batches stamped
// with another epoch), or the positions show a gap or a duplicate — it starts over from a fresh
// snapshot and says so on the first batch (NewSnapshot, ResetCause), so a consumer that keeps
// state rebuilds it instead of mixing two runs. The same rules as the Python client's
// EventFollower (clients/python/src/mbostream_client/_follow.py).

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	v1 "github.com/mbostream/mbostream/clients/go/gen/mbostream/v1"
)

// Position is a point in one server run's replay: the stream resumes after Sequence, provided
// the server still runs Epoch.
type Position struct {
	Sequence uint64
	Epoch    string
}

// EventsRequest selects what StreamEvents delivers and how it recovers.
type EventsRequest struct {
	// Instruments to stream; empty streams every instrument, which also lets the stream detect
	// gaps (positions of an unfiltered stream are contiguous; a filtered one only detects
	// duplicates).
	Instruments []Instrument
	// WithSnapshot starts with snapshot batches that rebuild each selected book; without it the
	// first connection starts at the live edge (or after Resume). Rebuilds always snapshot.
	WithSnapshot bool
	// Resume starts after this position instead; it cannot be combined with WithSnapshot.
	Resume *Position
	// MaxBatchRecords bounds the records per batch; 0 lets the server choose.
	MaxBatchRecords uint32
	// Backoff paces reconnections (zero: DefaultBackoff).
	Backoff Backoff
	// NoReconnect ends the stream at the first error instead of reconnecting or re-snapshotting.
	NoReconnect bool
}

// EventStreamStats is what an event stream went through since it started.
type EventStreamStats struct {
	// Connections is the number of calls opened, the first included.
	Connections int
	// Snapshots is the number of calls opened with with_snapshot.
	Snapshots int
	// Resumes is the number of calls opened with start_after_sequence.
	Resumes int
	// Rebuilds is the number of times the stream started over from a snapshot because it could
	// not resume; each has one of the causes below.
	Rebuilds int
	// OutOfRange counts resume positions the server no longer buffered.
	OutOfRange int
	// EpochChanges counts resumes into another server run.
	EpochChanges int
	// Gaps and Duplicates count live records whose replay_sequence skipped ahead or went back.
	Gaps       int
	Duplicates int
	// SlowConsumerCutoffs counts the times the server cut this reader off as too slow (each
	// followed by a resume).
	SlowConsumerCutoffs int
	// Records and Batches count the live records and batches handed out.
	Records uint64
	Batches uint64
}

// EventStream is a StreamEvents subscription that reconnects, resumes and re-snapshots by
// itself; read it with Next and Batch (or All). Next, Batch and Err belong to one goroutine;
// Stats, Position and Close may be called from any.
type EventStream struct {
	client   *Client
	req      EventsRequest
	filtered bool
	ctx      context.Context
	cancel   context.CancelFunc
	retry    *retrier
	logger   *slog.Logger
	closed   atomic.Bool

	// The current call, and what it was opened as.
	call         grpc.ServerStreamingClient[v1.StreamEventsResponse]
	hangUp       context.CancelFunc
	resumeEpoch  string // the epoch this call resumes in ("": not a resume, or unknown)
	snapshotCall bool   // this call was opened with with_snapshot
	firstBatch   bool   // the next batch is this call's first
	// A snapshot's position becomes the resume point once live records follow it.
	snapshotPending bool
	snapshotAt      Position
	// Why the next snapshot is a rebuild (nil for the stream's first snapshot).
	resetCause   error
	mustSnapshot bool

	batch *EventBatch
	err   error
	done  bool

	mu     sync.Mutex
	stats  EventStreamStats
	pos    Position
	hasPos bool
}

// StreamEvents opens a subscription to the raw MBO records, in replay order. The stream lives
// until ctx ends, Close is called, or an error it cannot recover from (a wrong selection, a
// message beyond WithMaxMessageSize, any error with NoReconnect, or Backoff.MaxAttempts failed
// reconnections).
func (c *Client) StreamEvents(ctx context.Context, req EventsRequest) *EventStream {
	ctx, cancel := context.WithCancel(ctx)
	s := &EventStream{
		client:       c,
		req:          req,
		filtered:     len(req.Instruments) > 0,
		ctx:          ctx,
		cancel:       cancel,
		retry:        newRetrier(req.Backoff),
		logger:       c.settings.logger.With("stream", "StreamEvents"),
		mustSnapshot: req.WithSnapshot,
	}
	if req.Resume != nil {
		s.pos, s.hasPos = *req.Resume, true
	}
	if err := req.Backoff.Validate(); err != nil {
		s.finish(err)
	}
	if req.Resume != nil && req.WithSnapshot {
		s.finish(&ConfigError{"EventsRequest.Resume", "cannot be combined with WithSnapshot (a resume that fails snapshots anyway)"})
	}
	return s
}

// Next waits for the next batch and reports whether there is one; false means the stream ended
// (see Err).
func (s *EventStream) Next() bool {
	s.batch = nil
	for !s.done {
		if s.ctx.Err() != nil {
			s.finish(s.contextErr())
			break
		}
		if s.call == nil && !s.open() {
			continue
		}
		m, err := s.call.Recv()
		if err != nil {
			s.hangUpCall()
			s.recover(err)
			continue
		}
		s.retry.reset()
		batch, err := DecodeEvents(m)
		if err != nil {
			s.hangUpCall()
			s.finish(err)
			return false
		}
		if batch.Len() == 0 {
			continue
		}
		if s.accept(batch) {
			s.batch = batch
			return true
		}
	}
	return false
}

// Batch is the batch the last successful Next delivered.
func (s *EventStream) Batch() *EventBatch { return s.batch }

// Err is why the stream ended: nil after Close, the context's error when ctx ended, otherwise
// the error it could not recover from.
func (s *EventStream) Err() error { return s.err }

// All iterates over the batches, then yields the stream's error, if any, once; breaking out of
// the loop closes the stream.
func (s *EventStream) All() iter.Seq2[*EventBatch, error] {
	return allOf(s.Next, func() *EventBatch { return s.batch }, s.Err, s.Close)
}

// Close ends the stream; a Next in progress returns false.
func (s *EventStream) Close() {
	s.closed.Store(true)
	s.cancel()
}

// Stats is a copy of the stream's counters.
func (s *EventStream) Stats() EventStreamStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Position is the resume point after the last live record handed out, and false before there is
// one (or right after the stream had to start over).
func (s *EventStream) Position() (Position, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pos, s.hasPos
}

// open starts a call: a resume when there is a position, else a snapshot or the live edge.
func (s *EventStream) open() bool {
	req := &v1.StreamEventsRequest{Instruments: selectors(s.req.Instruments), MaxBatchRecords: s.req.MaxBatchRecords}
	s.mu.Lock()
	s.stats.Connections++
	s.resumeEpoch, s.snapshotCall = "", false
	if s.hasPos {
		req.StartAfterSequence = &s.pos.Sequence
		req.ResumeEpoch = s.pos.Epoch
		s.resumeEpoch = s.pos.Epoch
		s.stats.Resumes++
	} else if s.mustSnapshot {
		req.WithSnapshot, s.snapshotCall = true, true
		s.stats.Snapshots++
	}
	s.mu.Unlock()
	ctx, hangUp := context.WithCancel(s.ctx)
	call, err := s.client.market.StreamEvents(ctx, req)
	if err != nil {
		hangUp()
		s.recover(err)
		return false
	}
	s.call, s.hangUp, s.firstBatch, s.snapshotPending = call, hangUp, true, false
	return true
}

func (s *EventStream) hangUpCall() {
	if s.hangUp != nil {
		s.hangUp()
	}
	s.call, s.hangUp = nil, nil
}

// accept checks a received batch against the stream's position; false when it was not handed
// out (the stream then starts over or ends).
func (s *EventStream) accept(b *EventBatch) bool {
	first := s.firstBatch
	s.firstBatch = false
	if first && s.snapshotCall {
		// A live first batch means the selected books were empty: an empty snapshot.
		b.NewSnapshot, b.ResetCause, s.resetCause = true, s.resetCause, nil
	}
	if b.Snapshot {
		s.snapshotPending, s.snapshotAt = true, Position{Sequence: b.BatchSequence, Epoch: b.Epoch}
		return true
	}
	s.mu.Lock()
	last, known := s.pos, s.hasPos
	s.mu.Unlock()
	if s.snapshotPending {
		last, known, s.snapshotPending = s.snapshotAt, true, false
	}
	if known && last.Epoch != "" && b.Epoch != "" && b.Epoch != last.Epoch {
		s.hangUpCall()
		s.restart(epochChanged(&RPCError{
			Method:  "StreamEvents",
			Code:    codes.FailedPrecondition,
			Message: fmt.Sprintf("received epoch %q after epoch %q", b.Epoch, last.Epoch),
		}))
		return false
	}
	if gap := s.continuity(b.ReplaySequence, last.Sequence, known); gap != nil {
		s.hangUpCall()
		s.mu.Lock()
		if gap.Duplicate() {
			s.stats.Duplicates++
		} else {
			s.stats.Gaps++
		}
		s.mu.Unlock()
		s.logger.Error("replay_sequence not continuous; starting over from a snapshot", "error", gap)
		// Never seen from a sound server: back off in case it keeps happening.
		if s.restart(gap) && !s.retry.wait(s.ctx) {
			s.finish(s.contextErr())
		}
		return false
	}
	s.mu.Lock()
	s.pos, s.hasPos = Position{Sequence: b.BatchSequence, Epoch: b.Epoch}, true
	s.stats.Records += uint64(b.Len())
	s.stats.Batches++
	s.mu.Unlock()
	return true
}

// continuity is the first record that does not follow on from the one before it: on an
// unfiltered stream each position is the previous one plus one, on a filtered one it is larger.
func (s *EventStream) continuity(seqs []uint64, last uint64, known bool) *ContinuityError {
	prev := last
	for i, seq := range seqs {
		if i == 0 && !known {
			prev = seq
			continue
		}
		if s.filtered && seq <= prev || !s.filtered && seq != prev+1 {
			return &ContinuityError{Expected: prev + 1, Received: seq}
		}
		prev = seq
	}
	return nil
}

// recover decides what a failed call leads to: the end of the stream, a resume after a backoff
// delay, or a fresh snapshot.
func (s *EventStream) recover(callErr error) {
	if s.ctx.Err() != nil {
		s.finish(s.contextErr())
		return
	}
	if s.client.closed.Load() {
		s.finish(ErrClientClosed)
		return
	}
	err := errorFromStatus("StreamEvents", callErr)
	if s.resumeEpoch != "" && err.Code == codes.FailedPrecondition {
		err = epochChanged(err)
	}
	switch {
	case isPermanent(err) || s.req.NoReconnect:
		s.finish(err)
		return
	case errors.Is(err, ErrResumeOutOfRange), errors.Is(err, ErrEpochChanged):
		s.restart(err)
		return
	case errors.Is(err, ErrSlowConsumer):
		s.mu.Lock()
		s.stats.SlowConsumerCutoffs++
		s.mu.Unlock()
		s.logger.Warn("cut off as a slow reader; resuming", "error", err)
	default:
		s.logger.Info("stream ended; reconnecting", "error", err)
	}
	if s.retry.exhausted() {
		s.finish(err)
		return
	}
	if !s.retry.wait(s.ctx) {
		s.finish(s.contextErr())
	}
}

// restart forgets the position so that the next call starts from a fresh snapshot; false when
// the stream ends instead (NoReconnect).
func (s *EventStream) restart(cause error) bool {
	if s.req.NoReconnect {
		s.finish(cause)
		return false
	}
	s.mu.Lock()
	s.stats.Rebuilds++
	switch {
	case errors.Is(cause, ErrEpochChanged):
		s.stats.EpochChanges++
	case errors.Is(cause, ErrResumeOutOfRange):
		s.stats.OutOfRange++
	}
	s.pos, s.hasPos = Position{}, false
	s.mu.Unlock()
	s.logger.Warn("cannot resume; starting over from a snapshot", "error", cause)
	s.resetCause, s.mustSnapshot = cause, true
	return true
}

func (s *EventStream) finish(err error) {
	s.hangUpCall()
	s.done, s.err = true, err
	s.cancel()
}

// contextErr is nil for a stream ended by Close, else why its context ended.
func (s *EventStream) contextErr() error {
	if s.closed.Load() {
		return nil
	}
	return context.Cause(s.ctx)
}

// isPermanent reports the errors no retry can cure: the request itself is wrong, or a message
// exceeds this client's size limit (it would come again: raise WithMaxMessageSize, or ask for
// smaller messages).
func isPermanent(err error) bool {
	return errors.Is(err, ErrInvalidRequest) || errors.Is(err, ErrInstrumentNotFound) ||
		errors.Is(err, ErrUnauthenticated) || errors.Is(err, ErrPermissionDenied) ||
		errors.Is(err, ErrMessageTooLarge)
}
