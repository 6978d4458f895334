package mbostream_test

// What a sound server never does — a gap, a duplicate, another epoch on a resume — played by a
// real gRPC server on a free port that answers each StreamEvents call from a script, so that the
// stream's detection and recovery can be checked against the exact requests it makes.

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	v1 "github.com/mbostream/mbostream/clients/go/gen/mbostream/v1"
	"github.com/mbostream/mbostream/clients/go/mbostream"
)

// call is the scripted answer to one StreamEvents call: these batches, then this status.
type call struct {
	batches []*v1.StreamEventsResponse
	end     error
}

// scriptedServer answers the n-th StreamEvents call with script[n] and records every request.
type scriptedServer struct {
	v1.UnimplementedMarketDataServiceServer
	mu       sync.Mutex
	script   []call
	requests []*v1.StreamEventsRequest
}

func (s *scriptedServer) StreamEvents(req *v1.StreamEventsRequest, stream grpc.ServerStreamingServer[v1.StreamEventsResponse]) error {
	s.mu.Lock()
	n := len(s.requests)
	s.requests = append(s.requests, proto.CloneOf(req))
	s.mu.Unlock()
	if n >= len(s.script) {
		<-stream.Context().Done() // the script is over: hold the call until the client leaves
		return status.Error(codes.Canceled, "script over")
	}
	for _, b := range s.script[n].batches {
		if err := stream.Send(b); err != nil {
			return err
		}
	}
	return s.script[n].end
}

func startScripted(t *testing.T, script ...call) (*scriptedServer, *mbostream.Client) {
	t.Helper()
	impl := &scriptedServer{script: script}
	return impl, dial(t, serveMarketData(t, impl))
}

// live is a batch of live records at positions seqs (every column filled).
func live(epoch string, seqs ...uint64) *v1.StreamEventsResponse {
	return batch(epoch, false, seqs, mbostream.ActionCancel)
}

// snapshot is a one-book snapshot batch (a Clear and an Add) reflecting position at.
func snapshot(epoch string, at uint64) *v1.StreamEventsResponse {
	b := batch(epoch, true, []uint64{at, at}, mbostream.ActionAdd)
	b.Action[0] = mbostream.ActionClear
	b.Flags[0], b.Flags[1] = byte(mbostream.FlagSnapshot), byte(mbostream.FlagSnapshot|mbostream.FlagLast)
	return b
}

func batch(epoch string, snap bool, seqs []uint64, action byte) *v1.StreamEventsResponse {
	n := len(seqs)
	b := &v1.StreamEventsResponse{
		BatchSequence: seqs[n-1], Snapshot: snap, TsOut: 1, Epoch: epoch, ReplaySequence: seqs,
		TsEvent: make([]uint64, n), TsRecv: make([]uint64, n), OrderId: make([]uint64, n), Price: make([]int64, n),
		Size: make([]uint32, n), Action: make([]byte, n), Side: make([]byte, n), Flags: make([]byte, n),
		Sequence: make([]uint32, n), InstrumentId: make([]uint32, n), PublisherId: make([]uint32, n),
	}
	for i := range n {
		b.Action[i], b.Side[i], b.Flags[i], b.InstrumentId[i] = action, mbostream.SideBid, byte(mbostream.FlagLast), 7
	}
	return b
}

// handedOut reads n batches and returns their first positions and NewSnapshot marks.
func handedOut(t *testing.T, s *mbostream.EventStream, n int) ([]uint64, []*mbostream.EventBatch) {
	t.Helper()
	var firsts []uint64
	var batches []*mbostream.EventBatch
	for range n {
		b := next(t, s)
		firsts = append(firsts, b.ReplaySequence[0])
		batches = append(batches, b)
	}
	return firsts, batches
}

func TestGapsAndDuplicatesStartOverFromASnapshot(t *testing.T) {
	for _, tc := range []struct {
		name      string
		bad       *v1.StreamEventsResponse
		expected  uint64
		received  uint64
		duplicate bool
	}{
		{"gap between batches", live("e", 14, 15), 13, 14, false},
		{"duplicate between batches", live("e", 12, 13), 13, 12, true},
		{"gap inside a batch", live("e", 13, 15), 14, 15, false},
		{"duplicate inside a batch", live("e", 13, 13), 14, 13, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
			defer cancel()
			srv, client := startScripted(t,
				call{batches: []*v1.StreamEventsResponse{snapshot("e", 10), live("e", 11, 12), tc.bad}},
				call{batches: []*v1.StreamEventsResponse{snapshot("e", 20), live("e", 21)}},
			)
			s := client.StreamEvents(ctx, mbostream.EventsRequest{WithSnapshot: true, Backoff: fastRetry})
			defer s.Close()
			firsts, batches := handedOut(t, s, 4)
			if want := []uint64{10, 11, 20, 21}; !slices.Equal(firsts, want) {
				t.Fatalf("handed out batches starting at %v, want %v (the bad batch withheld)", firsts, want)
			}
			var cont *mbostream.ContinuityError
			if !batches[2].NewSnapshot || !errors.As(batches[2].ResetCause, &cont) ||
				cont.Expected != tc.expected || cont.Received != tc.received || cont.Duplicate() != tc.duplicate {
				t.Fatalf("the new snapshot: %v, cause %v", batches[2].NewSnapshot, batches[2].ResetCause)
			}
			st := s.Stats()
			gaps, dups := 1, 0
			if tc.duplicate {
				gaps, dups = 0, 1
			}
			if st.Gaps != gaps || st.Duplicates != dups || st.Rebuilds != 1 || st.Snapshots != 2 || st.Records != 3 {
				t.Errorf("stats %+v", st)
			}
			srv.mu.Lock()
			defer srv.mu.Unlock()
			if len(srv.requests) != 2 || !srv.requests[1].GetWithSnapshot() || srv.requests[1].StartAfterSequence != nil {
				t.Errorf("requests %v; the second must be a fresh snapshot", srv.requests)
			}
		})
	}
}

func TestAFilteredStreamDetectsOnlyDuplicates(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
	defer cancel()
	_, client := startScripted(t,
		call{batches: []*v1.StreamEventsResponse{live("e", 5, 9), live("e", 20), live("e", 20)}},
	)
	s := client.StreamEvents(ctx, mbostream.EventsRequest{Instruments: []mbostream.Instrument{mbostream.ID(7)}, NoReconnect: true})
	firsts, _ := handedOut(t, s, 2)
	if !slices.Equal(firsts, []uint64{5, 20}) {
		t.Fatalf("handed out %v", firsts)
	}
	var cont *mbostream.ContinuityError
	if s.Next() || !errors.As(s.Err(), &cont) || !cont.Duplicate() {
		t.Fatalf("a repeated position on a filtered stream: %v", s.Err())
	}
}

func TestResumesWithPositionAndEpochAndRefusesAnotherEpoch(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
	defer cancel()
	srv, client := startScripted(t,
		call{batches: []*v1.StreamEventsResponse{live("a", 5, 6)}, end: status.Error(codes.Unavailable, "dropped")},
		call{batches: []*v1.StreamEventsResponse{live("a", 7)}}, // ends with OK: resume again
		call{batches: []*v1.StreamEventsResponse{live("b", 8)}}, // a server that ignored resume_epoch
		call{batches: []*v1.StreamEventsResponse{snapshot("b", 100), live("b", 101)}},
	)
	s := client.StreamEvents(ctx, mbostream.EventsRequest{Backoff: fastRetry})
	defer s.Close()
	firsts, batches := handedOut(t, s, 4)
	if !slices.Equal(firsts, []uint64{5, 7, 100, 101}) {
		t.Fatalf("handed out %v", firsts)
	}
	if !batches[2].NewSnapshot || !errors.Is(batches[2].ResetCause, mbostream.ErrEpochChanged) {
		t.Fatalf("after batches of another epoch: new snapshot %v, cause %v", batches[2].NewSnapshot, batches[2].ResetCause)
	}
	srv.mu.Lock()
	requests := srv.requests
	srv.mu.Unlock()
	resume := func(i int) (uint64, string) {
		return requests[i].GetStartAfterSequence(), requests[i].GetResumeEpoch()
	}
	if len(requests) != 4 || requests[0].StartAfterSequence != nil || requests[0].GetWithSnapshot() {
		t.Fatalf("requests %v; the first must start at the live edge", requests)
	}
	if seq, epoch := resume(1); seq != 6 || epoch != "a" {
		t.Errorf("second call resumed after %d in %q, want 6 in \"a\"", seq, epoch)
	}
	if seq, epoch := resume(2); seq != 7 || epoch != "a" {
		t.Errorf("third call resumed after %d in %q, want 7 in \"a\"", seq, epoch)
	}
	if !requests[3].GetWithSnapshot() || requests[3].StartAfterSequence != nil {
		t.Errorf("fourth call %v, want a fresh snapshot", requests[3])
	}
	if pos, ok := s.Position(); !ok || pos != (mbostream.Position{Sequence: 101, Epoch: "b"}) {
		t.Errorf("Position() = %+v, %v", pos, ok)
	}
	if st := s.Stats(); st.EpochChanges != 1 || st.Resumes != 2 || st.Connections != 4 || st.Records != 4 {
		t.Errorf("stats %+v", st)
	}
}

func TestMalformedBatchEndsTheStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
	defer cancel()
	ragged := live("e", 1, 2)
	ragged.Price = ragged.Price[:1]
	_, client := startScripted(t, call{batches: []*v1.StreamEventsResponse{ragged}})
	var malformed *mbostream.MalformedBatchError
	if err := streamErr(client.StreamEvents(ctx, mbostream.EventsRequest{})); !errors.As(err, &malformed) || malformed.Column != "price" {
		t.Errorf("a ragged batch: %v", err)
	}
}

func TestClosingTheClientEndsItsStreams(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
	defer cancel()
	_, client := startScripted(t, call{batches: []*v1.StreamEventsResponse{live("e", 1)}})
	s := client.StreamEvents(ctx, mbostream.EventsRequest{Backoff: fastRetry})
	next(t, s)
	ended := make(chan error, 1)
	go func() {
		s.Next()
		ended <- s.Err()
	}()
	_ = client.Close()
	select {
	case err := <-ended:
		if !errors.Is(err, mbostream.ErrClientClosed) {
			t.Errorf("a stream of a closed client ended with %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the stream outlived its client")
	}
}

func TestContextEndsTheStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
	defer cancel()
	_, client := startScripted(t, call{batches: []*v1.StreamEventsResponse{live("e", 1)}})
	streamCtx, stop := context.WithCancel(ctx)
	s := client.StreamEvents(streamCtx, mbostream.EventsRequest{})
	next(t, s)
	stop()
	if s.Next() || !errors.Is(s.Err(), context.Canceled) {
		t.Errorf("after its context ended: %v", s.Err())
	}
}
