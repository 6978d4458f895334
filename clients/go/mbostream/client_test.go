package mbostream_test

// The client against a real `mbostream serve` subprocess. Nothing of the client or the server is
// replaced: books come over gRPC, a dropped connection is a real TCP proxy resetting its sockets,
// a restart is a SIGKILL and a new process on the same port, a slow reader is a reader that sleeps.

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	v1 "github.com/mbostream/mbostream/clients/go/gen/mbostream/v1"
	"github.com/mbostream/mbostream/clients/go/internal/testserver"
	"github.com/mbostream/mbostream/clients/go/mbostream"
)

// fastRetry keeps reconnections quick in tests.
var fastRetry = mbostream.Backoff{Base: 50 * time.Millisecond, Factor: 2, Cap: 500 * time.Millisecond}

// TestAgainstOneServer runs the checks that can share one server: the 60,000-record sample at
// 20,000 records/s, looping.
func TestAgainstOneServer(t *testing.T) {
	srv := testserver.Start(t, testserver.Options{Args: []string{"--rate", "20000", "--loop"}})
	client := dial(t, srv.Address)
	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	defer cancel()
	// Books are listed once the replay has seen them: wait for the sample's three.
	var infos []*v1.InstrumentInfo
	for deadline := time.Now().Add(stepTimeout); len(infos) != testserver.SampleInstruments; time.Sleep(50 * time.Millisecond) {
		var err error
		if infos, err = client.ListInstruments(ctx); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("ListInstruments gave %d books, want the sample's %d: %v", len(infos), testserver.SampleInstruments, infos)
		}
	}

	t.Run("GetBookByIDAndSymbol", func(t *testing.T) { testGetBook(ctx, t, srv, client, infos) })
	t.Run("ErrorsAreTyped", func(t *testing.T) { testErrors(ctx, t, client, infos[0]) })
	t.Run("MessageSizeLimit", func(t *testing.T) { testMessageSize(ctx, t, srv, infos[0]) })
	t.Run("StreamBook", func(t *testing.T) { testStreamBook(ctx, t, client, infos) })
	t.Run("CodecReadsTheServersMessages", func(t *testing.T) { testCodecReadsTheServersMessages(ctx, t, client, infos) })
	t.Run("StreamEventsSnapshotThenLive", func(t *testing.T) { testSnapshotThenLive(ctx, t, client, len(infos)) })
	t.Run("FilteredStreamEvents", func(t *testing.T) { testFiltered(ctx, t, client, infos[1]) })
	t.Run("ResumesAfterDroppedConnections", func(t *testing.T) { testResumeAfterDrops(ctx, t, srv) })
	t.Run("OutOfRangeFallsBackToSnapshot", func(t *testing.T) { testOutOfRange(ctx, t, client) })
	t.Run("Epoch", func(t *testing.T) { testEpoch(ctx, t, srv, client) })
}

func testGetBook(ctx context.Context, t *testing.T, srv *testserver.Server, client *mbostream.Client, infos []*v1.InstrumentInfo) {
	// Pause the replay so that both calls read the same replay position.
	control := dial(t, srv.Address, mbostream.WithBearerToken(controlToken))
	replay := v1.NewReplayServiceClient(control.Conn())
	if _, err := replay.Pause(ctx, &v1.PauseRequest{}); err != nil {
		t.Fatal(mbostream.ErrorFromStatus("Pause", err))
	}
	defer func() {
		if _, err := replay.Resume(ctx, &v1.ResumeRequest{}); err != nil {
			t.Error(mbostream.ErrorFromStatus("Resume", err))
		}
	}()
	for _, info := range infos {
		opts := mbostream.BookOptions{Depth: 3, IncludeOrders: true}
		bySymbol, err := client.GetBook(ctx, mbostream.Symbol(info.GetSymbol()), opts)
		if err != nil {
			t.Fatal(err)
		}
		byID, err := client.GetBook(ctx, mbostream.ID(info.GetInstrumentId()).OnPublisher(info.GetPublisherId()), opts)
		if err != nil {
			t.Fatal(err)
		}
		book := bySymbol.Snapshot
		if !proto.Equal(book, byID.Snapshot) || bySymbol.Epoch != byID.Epoch {
			t.Errorf("%s: the book by symbol and by id differ at the same position", info.GetSymbol())
		}
		if book.GetInstrumentId() != info.GetInstrumentId() || book.GetSymbol() != info.GetSymbol() {
			t.Errorf("asked for %s (%d), got %s (%d)", info.GetSymbol(), info.GetInstrumentId(), book.GetSymbol(), book.GetInstrumentId())
		}
		if len(book.GetBids()) == 0 || len(book.GetBids()) > 3 || len(book.GetAsks()) == 0 || len(book.GetAsks()) > 3 {
			t.Errorf("%s: depth 3 gave %d bids and %d asks", info.GetSymbol(), len(book.GetBids()), len(book.GetAsks()))
		}
		for _, level := range append(book.GetBids(), book.GetAsks()...) {
			var size uint64
			for _, o := range level.GetOrders() {
				size += uint64(o.GetSize())
			}
			if int(level.GetCount()) != len(level.GetOrders()) || level.GetSize() != size {
				t.Errorf("%s: level %s has count %d, size %d, but %d orders of total size %d", info.GetSymbol(),
					mbostream.FormatPrice(level.GetPrice()), level.GetCount(), level.GetSize(), len(level.GetOrders()), size)
			}
			if back, err := mbostream.ParsePrice(mbostream.FormatPrice(level.GetPrice())); err != nil || back != level.GetPrice() {
				t.Errorf("price %d does not survive formatting: %d, %v", level.GetPrice(), back, err)
			}
		}
	}
	// The ReplayService needs the token: the same call without it is refused.
	_, err := v1.NewReplayServiceClient(client.Conn()).GetStatus(ctx, &v1.GetStatusRequest{})
	if err := mbostream.ErrorFromStatus("GetStatus", err); !errors.Is(err, mbostream.ErrUnauthenticated) {
		t.Errorf("GetStatus without a token: %v, want ErrUnauthenticated", err)
	}
}

func testErrors(ctx context.Context, t *testing.T, client *mbostream.Client, info *v1.InstrumentInfo) {
	symbol := mbostream.Symbol(info.GetSymbol())
	for _, tc := range []struct {
		name string
		call func() error
		kind error
	}{
		{"GetBook of an unknown symbol", func() error {
			_, err := client.GetBook(ctx, mbostream.Symbol("NOPE"), mbostream.BookOptions{})
			return err
		}, mbostream.ErrInstrumentNotFound},
		{"GetBook of an unknown id", func() error {
			_, err := client.GetBook(ctx, mbostream.ID(4_000_000_000), mbostream.BookOptions{})
			return err
		}, mbostream.ErrInstrumentNotFound},
		{"GetBook of no instrument", func() error {
			_, err := client.GetBook(ctx, mbostream.Instrument{}, mbostream.BookOptions{})
			return err
		}, mbostream.ErrInvalidRequest},
		{"GetBook deeper than allowed", func() error {
			_, err := client.GetBook(ctx, symbol, mbostream.BookOptions{Depth: 1_000_000})
			return err
		}, mbostream.ErrInvalidRequest},
		{"StreamEvents of an unknown symbol", func() error {
			return streamErr(client.StreamEvents(ctx, mbostream.EventsRequest{Instruments: []mbostream.Instrument{mbostream.Symbol("NOPE")}}))
		}, mbostream.ErrInstrumentNotFound},
		{"StreamEvents resuming ahead of the replay, without reconnecting", func() error {
			return streamErr(client.StreamEvents(ctx, mbostream.EventsRequest{Resume: &mbostream.Position{Sequence: 1 << 60}, NoReconnect: true}))
		}, mbostream.ErrResumeOutOfRange},
		{"StreamBook of an unknown symbol", func() error {
			s := client.StreamBook(ctx, mbostream.BookStreamRequest{Instruments: []mbostream.Instrument{mbostream.Symbol("NOPE")}})
			if s.Next() {
				return errors.New("an update for an unknown symbol")
			}
			return s.Err()
		}, mbostream.ErrInstrumentNotFound},
		{"StreamBook with a negative rate", func() error {
			s := client.StreamBook(ctx, mbostream.BookStreamRequest{MaxUpdatesPerSecond: -1})
			if s.Next() {
				return errors.New("an update for a negative rate")
			}
			return s.Err()
		}, mbostream.ErrInvalidRequest},
	} {
		err := tc.call()
		var rpc *mbostream.RPCError
		if !errors.Is(err, tc.kind) || !errors.As(err, &rpc) || rpc.Message == "" {
			t.Errorf("%s: %v, want %v with the server's message", tc.name, err, tc.kind)
		}
	}
	// Refused before any call: a resume cannot also ask for a snapshot.
	both := mbostream.EventsRequest{WithSnapshot: true, Resume: &mbostream.Position{Sequence: 1}}
	var cfg *mbostream.ConfigError
	if err := streamErr(client.StreamEvents(ctx, both)); !errors.As(err, &cfg) || cfg.Setting != "EventsRequest.Resume" {
		t.Errorf("StreamEvents with snapshot and resume: %v", err)
	}
}

// streamErr is the error that ends an event stream which must not deliver anything.
func streamErr(s *mbostream.EventStream) error {
	defer s.Close()
	if s.Next() {
		return errors.New("the stream delivered a batch")
	}
	return s.Err()
}

func testStreamBook(ctx context.Context, t *testing.T, client *mbostream.Client, infos []*v1.InstrumentInfo) {
	for _, combine := range []bool{false, true} {
		s := client.StreamBook(ctx, mbostream.BookStreamRequest{Depth: 2, CombineBooks: combine})
		snapshots := map[uint32]bool{}
		var updates, messages uint64
		for updates < 20 && s.Next() {
			u := s.Update()
			messages++
			if u.TsOut == 0 || len(u.Books) == 0 {
				t.Fatalf("combine %v: update without ts_out or books: %+v", combine, u)
			}
			seen := map[uint32]bool{}
			for _, book := range u.Books {
				id := book.GetInstrumentId()
				if len(book.GetBids()) > 2 || len(book.GetAsks()) > 2 || seen[id] {
					t.Fatalf("combine %v: book %d twice in one message, or deeper than 2", combine, id)
				}
				seen[id] = true
				if u.Snapshot {
					snapshots[id] = true
				} else if !snapshots[id] {
					t.Fatalf("combine %v: an update of book %d before its snapshot", combine, id)
				}
			}
			if u.Snapshot && len(u.Books) != 1 {
				t.Fatalf("combine %v: a snapshot message with %d books", combine, len(u.Books))
			}
			if !u.Snapshot {
				updates++
			}
		}
		if s.Err() != nil {
			t.Fatal(s.Err())
		}
		s.Close()
		if len(snapshots) != len(infos) {
			t.Errorf("combine %v: snapshots of %d books, want %d", combine, len(snapshots), len(infos))
		}
		if st := s.Stats(); st.Messages != messages || st.Connections != 1 {
			t.Errorf("combine %v: stats %+v after %d messages on one connection", combine, st, messages)
		}
		if s.Next() || s.Err() != nil {
			t.Errorf("combine %v: a closed stream goes on, or ends with %v", combine, s.Err())
		}
	}
}

func testSnapshotThenLive(ctx context.Context, t *testing.T, client *mbostream.Client, books int) {
	s := client.StreamEvents(ctx, mbostream.EventsRequest{WithSnapshot: true})
	defer s.Close()
	var check continuity
	var clears, lasts int
	first := true
	for check.live < 5_000 {
		b := next(t, s)
		if first && (!b.NewSnapshot || b.ResetCause != nil || !b.Snapshot) {
			t.Fatalf("first batch: snapshot %v, new snapshot %v, reset cause %v", b.Snapshot, b.NewSnapshot, b.ResetCause)
		}
		if !first && b.NewSnapshot {
			t.Fatal("a second NewSnapshot on a healthy stream")
		}
		first = false
		check.add(t, b)
		if !b.Snapshot {
			continue
		}
		// Per book: a Clear, then one Add per resting order, F_LAST on the book's last record.
		for i := range b.Len() {
			r := b.Record(i)
			switch {
			case r.Action == mbostream.ActionClear:
				clears++
			case r.Action != mbostream.ActionAdd:
				t.Fatalf("snapshot record %d has action %q", i, r.Action)
			}
			if r.Flags.Has(mbostream.FlagLast) {
				lasts++
				if i+1 < b.Len() && b.Action[i+1] != mbostream.ActionClear {
					t.Fatalf("snapshot record %d ends a book but the next one is not a Clear", i)
				}
			}
		}
	}
	if clears != books || lasts != books {
		t.Errorf("snapshot of %d Clears and %d F_LAST records, want %d books", clears, lasts, books)
	}
	st := s.Stats()
	if st.Connections != 1 || st.Snapshots != 1 || st.Rebuilds != 0 || st.Records != check.live {
		t.Errorf("stats %+v after %d live records on one connection", st, check.live)
	}
	if pos, ok := s.Position(); !ok || pos.Sequence != check.last {
		t.Errorf("Position() = %+v, %v; last record handed out was %d", pos, ok, check.last)
	}
}

func testFiltered(ctx context.Context, t *testing.T, client *mbostream.Client, info *v1.InstrumentInfo) {
	id := info.GetInstrumentId()
	var records int
	var last uint64
	for b, err := range client.StreamEvents(ctx, mbostream.EventsRequest{Instruments: []mbostream.Instrument{mbostream.ID(id)}}).All() {
		if err != nil {
			t.Fatal(err)
		}
		for i, seq := range b.ReplaySequence {
			if b.InstrumentID[i] != id || seq <= last {
				t.Fatalf("record of instrument %d at %d after %d, streaming only %d", b.InstrumentID[i], seq, last, id)
			}
			last = seq
		}
		if records += b.Len(); records > 2_000 {
			break
		}
	}
}

func testResumeAfterDrops(ctx context.Context, t *testing.T, srv *testserver.Server) {
	proxy := testserver.StartProxy(t, srv.Address)
	client := dial(t, proxy.Address())
	s := client.StreamEvents(ctx, mbostream.EventsRequest{WithSnapshot: true, Backoff: fastRetry})
	defer s.Close()
	var check continuity
	for check.live < 2_000 {
		check.add(t, next(t, s))
	}
	for range 2 {
		if cut := proxy.DropAll(); cut < 2 {
			t.Fatalf("the proxy had %d connections to cut", cut)
		}
		before := check.live
		for check.live < before+2_000 {
			check.add(t, next(t, s))
		}
	}
	// Resumed in place both times: one snapshot only, and no gap (the check above would fail).
	st := s.Stats()
	if st.Resumes < 2 || st.Snapshots != 1 || st.Rebuilds != 0 || check.snapshots != 1 || st.Gaps+st.Duplicates != 0 {
		t.Errorf("stats %+v, %d snapshots handed out; want >= 2 resumes and one snapshot", st, check.snapshots)
	}
}

func testOutOfRange(ctx context.Context, t *testing.T, client *mbostream.Client) {
	probe := client.StreamEvents(ctx, mbostream.EventsRequest{})
	now := next(t, probe).BatchSequence
	probe.Close()
	s := client.StreamEvents(ctx, mbostream.EventsRequest{Resume: &mbostream.Position{Sequence: now + 10_000_000}, Backoff: fastRetry})
	defer s.Close()
	first := next(t, s)
	if !first.Snapshot || !first.NewSnapshot || !errors.Is(first.ResetCause, mbostream.ErrResumeOutOfRange) {
		t.Fatalf("first batch after an out-of-range resume: snapshot %v, new snapshot %v, cause %v",
			first.Snapshot, first.NewSnapshot, first.ResetCause)
	}
	var check continuity
	check.add(t, first)
	for check.live < 2_000 {
		check.add(t, next(t, s))
	}
	st := s.Stats()
	if st.OutOfRange != 1 || st.Rebuilds != 1 || st.Resumes != 1 || st.Snapshots != 1 || st.Connections != 2 {
		t.Errorf("stats %+v; want one refused resume, then one snapshot", st)
	}
}

// testEpoch checks the server run's identity on every message kind, and that a resume into
// another epoch is refused and answered with a fresh snapshot.
func testEpoch(ctx context.Context, t *testing.T, srv *testserver.Server, client *mbostream.Client) {
	infos, err := client.ListInstruments(ctx)
	if err != nil {
		t.Fatal(err)
	}
	book, err := client.GetBook(ctx, mbostream.ID(infos[0].GetInstrumentId()), mbostream.BookOptions{Depth: 1})
	if err != nil {
		t.Fatal(err)
	}
	epoch := book.Epoch
	if epoch == "" {
		t.Fatal("GetBook carries no epoch: the server does not implement epochs")
	}
	control := dial(t, srv.Address, mbostream.WithBearerToken(controlToken))
	status, err := v1.NewReplayServiceClient(control.Conn()).GetStatus(ctx, &v1.GetStatusRequest{})
	if err != nil {
		t.Fatal(mbostream.ErrorFromStatus("GetStatus", err))
	}
	books := client.StreamBook(ctx, mbostream.BookStreamRequest{Depth: 1})
	if !books.Next() {
		t.Fatal(books.Err())
	}
	books.Close()
	events := client.StreamEvents(ctx, mbostream.EventsRequest{})
	live := next(t, events)
	events.Close()
	if got := []string{status.GetStatus().GetEpoch(), books.Update().Epoch, live.Epoch}; slices.ContainsFunc(got, func(e string) bool { return e != epoch }) {
		t.Errorf("epochs of GetStatus, StreamBook, StreamEvents: %q; GetBook's: %q", got, epoch)
	}

	other := &mbostream.Position{Sequence: live.BatchSequence, Epoch: "another-run"}
	refused := streamErr(client.StreamEvents(ctx, mbostream.EventsRequest{Resume: other, NoReconnect: true}))
	if !errors.Is(refused, mbostream.ErrEpochChanged) || !errors.Is(refused, mbostream.ErrPreconditionFailed) {
		t.Errorf("a resume into another epoch without reconnecting: %v, want ErrEpochChanged", refused)
	}
	s := client.StreamEvents(ctx, mbostream.EventsRequest{Resume: other, Backoff: fastRetry})
	defer s.Close()
	first := next(t, s)
	if !first.NewSnapshot || !errors.Is(first.ResetCause, mbostream.ErrEpochChanged) || first.Epoch != epoch {
		t.Fatalf("first batch after resuming into another epoch: new snapshot %v, cause %v, epoch %q",
			first.NewSnapshot, first.ResetCause, first.Epoch)
	}
	var check continuity
	check.add(t, first)
	for check.live < 2_000 {
		check.add(t, next(t, s))
	}
	if st := s.Stats(); st.EpochChanges != 1 || st.Rebuilds != 1 || st.OutOfRange != 0 {
		t.Errorf("stats %+v; want one epoch change", st)
	}
}

// TestServerKilledAndRestarted kills the server with SIGKILL mid-stream and starts another on the
// same port. The new run has another epoch, so (as the proto documents) the event stream may not
// resume: it must be refused, start over from a fresh snapshot, say why, and hand out no gap and
// no duplicate on either side of the restart. The book stream reconnects and sees the new epoch.
func TestServerKilledAndRestarted(t *testing.T) {
	port := testserver.FreePort(t)
	first := testserver.Start(t, testserver.Options{Port: port, Args: []string{"--rate", "50000", "--loop"}})
	client := dial(t, first.Address)
	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	defer cancel()

	books := client.StreamBook(ctx, mbostream.BookStreamRequest{Depth: 1, Backoff: fastRetry})
	defer books.Close()
	events := client.StreamEvents(ctx, mbostream.EventsRequest{WithSnapshot: true, Backoff: fastRetry})
	defer events.Close()
	var check continuity
	for check.live < 20_000 {
		check.add(t, next(t, events))
	}
	if !books.Next() {
		t.Fatal(books.Err())
	}
	oldEpoch := books.Update().Epoch

	first.Kill(t)
	testserver.Start(t, testserver.Options{Port: port, Args: []string{"--rate", "20000", "--loop"}})

	var reset *mbostream.EventBatch
	for reset == nil {
		b := next(t, events)
		check.add(t, b)
		if b.NewSnapshot {
			reset = b
		}
	}
	after := check.live
	for check.live < after+5_000 {
		check.add(t, next(t, events))
	}
	if !errors.Is(reset.ResetCause, mbostream.ErrEpochChanged) {
		t.Errorf("the stream started over because of %v, want ErrEpochChanged", reset.ResetCause)
	}
	if reset.Epoch == "" || reset.Epoch == check.epochs[0] {
		t.Errorf("epochs before and after the restart: %q", check.epochs)
	}
	st := events.Stats()
	if st.EpochChanges != 1 || st.Rebuilds != 1 || st.Gaps != 0 || st.Duplicates != 0 || check.snapshots != 2 {
		t.Errorf("events stats %+v, %d snapshots handed out; want one epoch change and one rebuild", st, check.snapshots)
	}

	for books.Next() {
		if u := books.Update(); u.Reconnected {
			if u.Epoch == oldEpoch || u.Epoch == "" || books.Stats().EpochChanges != 1 {
				t.Errorf("book stream after the restart: epoch %q (before %q), stats %+v", u.Epoch, oldEpoch, books.Stats())
			}
			break
		}
	}
	if books.Err() != nil {
		t.Fatal(books.Err())
	}
}

// TestSlowReaderIsCutOffAndResumes reads too slowly on purpose: the server cuts the stream off
// with RESOURCE_EXHAUSTED, and the stream resumes where it stopped, without a snapshot, a gap or a
// duplicate.
func TestSlowReaderIsCutOffAndResumes(t *testing.T) {
	srv := testserver.Start(t, testserver.Options{
		Args: []string{"--rate", "100000", "--loop"},
		Env:  []string{"MBOSTREAM_SUBSCRIBER_BUFFER_BATCHES=4"},
	})
	// Fixed 64 KiB windows (no BDP growth), so that falling behind reaches the server.
	client := dial(t, srv.Address, mbostream.WithDialOptions(
		grpc.WithInitialWindowSize(1<<16), grpc.WithInitialConnWindowSize(1<<16)))
	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	defer cancel()
	s := client.StreamEvents(ctx, mbostream.EventsRequest{Backoff: fastRetry})
	defer s.Close()
	var check continuity
	check.add(t, next(t, s))
	time.Sleep(3 * time.Second) // the server queues more than 4 batches beyond what the transport holds
	for s.Stats().SlowConsumerCutoffs == 0 {
		check.add(t, next(t, s))
	}
	cutAt := check.live
	for check.live < cutAt+20_000 {
		check.add(t, next(t, s))
	}
	st := s.Stats()
	if st.Resumes < 1 || st.Snapshots != 0 || st.Rebuilds != 0 || check.snapshots != 0 || st.Gaps+st.Duplicates != 0 {
		t.Errorf("stats %+v; want a resume after the cut-off, and no snapshot", st)
	}
}

// TestStreamLimitEndsAfterMaxAttempts: a server that serves one stream refuses a second with
// RESOURCE_EXHAUSTED (not a slow reader), which the stream retries MaxAttempts times.
func TestStreamLimitEndsAfterMaxAttempts(t *testing.T) {
	srv := testserver.Start(t, testserver.Options{Args: []string{"--rate", "20000", "--loop", "--max-streams", "1"}})
	client := dial(t, srv.Address)
	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	defer cancel()
	held := client.StreamBook(ctx, mbostream.BookStreamRequest{Depth: 1})
	defer held.Close()
	if !held.Next() {
		t.Fatal(held.Err())
	}
	retry := mbostream.Backoff{Base: 10 * time.Millisecond, Factor: 2, Cap: 50 * time.Millisecond, MaxAttempts: 2}
	s := client.StreamEvents(ctx, mbostream.EventsRequest{Backoff: retry})
	err := streamErr(s)
	if !errors.Is(err, mbostream.ErrStreamLimit) || errors.Is(err, mbostream.ErrSlowConsumer) {
		t.Errorf("a stream beyond the limit: %v, want ErrStreamLimit", err)
	}
	if st := s.Stats(); st.Connections != 3 {
		t.Errorf("%d connections, want the first and MaxAttempts = 2 more", st.Connections)
	}
}
