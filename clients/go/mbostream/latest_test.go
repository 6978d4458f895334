package mbostream_test

// LatestBooks against a real `mbostream serve`: a reader that sleeps takes fresh books while a
// plain stream on another connection reads old ones first; Take hands out only what changed (the
// replay paused through the ReplayService); Close and a cancelled context end the goroutine; a
// restarted server's books replace the old run's.

import (
	"context"
	"errors"
	"testing"
	"time"

	v1 "github.com/mbostream/mbostream/clients/go/gen/mbostream/v1"
	"github.com/mbostream/mbostream/clients/go/internal/testserver"
	"github.com/mbostream/mbostream/clients/go/mbostream"
)

// liveWithin is how old a book may be when taken and still count as live (tests/slow_reader.py's
// LIVE_WITHIN_NS).
const liveWithin = 500 * time.Millisecond

// TestLatestBooks runs the checks that can share one server: the sample at 100,000 records/s,
// looping, so that every book changes at every refresh.
func TestLatestBooks(t *testing.T) {
	srv := testserver.Start(t, testserver.Options{Args: []string{"--rate", "100000", "--loop"}})
	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	defer cancel()
	t.Run("FreshAfterASlowRead", func(t *testing.T) { testFreshAfterASlowRead(ctx, t, srv) })
	t.Run("TakeHandsOutWhatChanged", func(t *testing.T) { testTakeHandsOutWhatChanged(ctx, t, srv) })
	t.Run("CloseAndCancelEndTheGoroutine", func(t *testing.T) { testLatestBooksEnd(ctx, t, srv) })
}

// testFreshAfterASlowRead is the point of LatestBooks: a reader that does not read for 3 s then
// takes books published less than liveWithin ago, while a plain stream of the same whole L3 books
// (large messages: the receive windows hold seconds of them) first reads what the server sent
// when it stopped reading. Each has a connection of its own, as in tests/slow_reader.py.
func testFreshAfterASlowRead(ctx context.Context, t *testing.T, srv *testserver.Server) {
	req := mbostream.BookStreamRequest{IncludeOrders: true} // Depth 0: whole books
	latest := dial(t, srv.Address).LatestBooks(ctx, req)
	defer latest.Close()
	plain := dial(t, srv.Address).StreamBook(ctx, req)
	defer plain.Close()
	if !plain.Next() {
		t.Fatal(plain.Err())
	}
	waitBooks(t, latest)

	time.Sleep(3 * time.Second)
	resumed := time.Now()
	taken := latest.Take()
	if len(taken) == 0 {
		t.Fatalf("nothing changed in 3 s of a replay at 100,000 records/s: %+v", latest.Stats())
	}
	for key, b := range taken {
		if age := ageAt(resumed, b.TsOut); age > liveWithin {
			t.Errorf("book %+v taken %s after its publication, want at most %s", key, age, liveWithin)
		} else {
			t.Logf("LatestBooks: book %+v taken %s after its publication", key, age)
		}
	}
	if !plain.Next() {
		t.Fatal(plain.Err())
	}
	if age := ageAt(resumed, plain.Update().TsOut); age <= liveWithin {
		t.Errorf("the plain stream's first book after the pause is %s old: the windows held no old books, so this test shows nothing", age)
	} else {
		t.Logf("plain StreamBook: first book after the pause read %s after its publication", age)
	}
	st := latest.Stats()
	if st.Superseded == 0 || st.Books <= uint64(len(taken)) {
		t.Errorf("stats %+v: the goroutine did not read ahead of the 3 s pause", st)
	}
	t.Logf("LatestBooks stats %+v", st)
}

// testTakeHandsOutWhatChanged pauses the replay, so that no book changes: what changed is taken
// once, a second Take is empty and Changed stays silent, until the replay resumes.
func testTakeHandsOutWhatChanged(ctx context.Context, t *testing.T, srv *testserver.Server) {
	client := dial(t, srv.Address)
	latest := client.LatestBooks(ctx, mbostream.BookStreamRequest{Depth: 2, CombineBooks: true})
	defer latest.Close()
	var handedOut uint64
	for len(latest.All()) < testserver.SampleInstruments {
		handedOut += uint64(len(waitBooks(t, latest)))
	}

	replay := v1.NewReplayServiceClient(dial(t, srv.Address, mbostream.WithBearerToken(controlToken)).Conn())
	// Books change at every refresh (5 ms): some are waiting to be taken when the replay pauses.
	time.Sleep(200 * time.Millisecond)
	paused, err := replay.Pause(ctx, &v1.PauseRequest{})
	if err != nil {
		t.Fatal(mbostream.ErrorFromStatus("Pause", err))
	}
	resumed := false
	defer func() {
		if !resumed {
			_, _ = replay.Resume(ctx, &v1.ResumeRequest{})
		}
	}()
	at := paused.GetStatus().GetReplaySequence()
	// Books published before the pause may still be on their way: let them arrive.
	time.Sleep(500 * time.Millisecond)
	taken := latest.Take()
	if len(taken) == 0 {
		t.Fatalf("nothing to take after 200 ms of a replay at 100,000 records/s: %+v", latest.Stats())
	}
	for _, b := range taken {
		handedOut++
		if seq := b.Book.GetReplaySequence(); seq > at {
			t.Errorf("a book at replay position %d, after the pause at %d", seq, at)
		}
	}
	if again := latest.Take(); again != nil {
		t.Errorf("a second Take with the replay paused gave %d books", len(again))
	}
	select {
	case <-latest.Changed():
		t.Fatalf("Changed fired with the replay paused: %+v", latest.Take())
	case <-time.After(500 * time.Millisecond):
	}
	// Every version received was handed out once or replaced by a newer one before a Take.
	if st := latest.Stats(); st.Books != handedOut+st.Superseded || st.Stream.Connections != 1 {
		t.Errorf("stats %+v after %d books handed out", st, handedOut)
	}

	if _, err := replay.Resume(ctx, &v1.ResumeRequest{}); err != nil {
		t.Fatal(mbostream.ErrorFromStatus("Resume", err))
	}
	resumed = true
	select {
	case <-latest.Changed():
	case <-time.After(stepTimeout):
		t.Fatal("Changed did not fire after the replay resumed")
	}
	taken = latest.Take()
	if len(taken) == 0 {
		t.Fatal("Changed fired, then Take gave nothing")
	}
	for key, b := range taken {
		if seq := b.Book.GetReplaySequence(); seq <= at {
			t.Errorf("book %+v at replay position %d after resuming from %d", key, seq, at)
		}
		if held, ok := latest.Get(key); !ok || held.Book.GetReplaySequence() < b.Book.GetReplaySequence() {
			t.Errorf("Get(%+v) = %v, %v: older than what Take gave", key, held.Book.GetReplaySequence(), ok)
		}
	}
}

// testLatestBooksEnd: Close ends the goroutine with no error; a cancelled context ends it with the
// context's.
func testLatestBooksEnd(ctx context.Context, t *testing.T, srv *testserver.Server) {
	client := dial(t, srv.Address)
	req := mbostream.BookStreamRequest{Depth: 1}

	closed := client.LatestBooks(ctx, req)
	waitBooks(t, closed)
	closed.Close()
	select {
	case <-closed.Done():
	default:
		t.Fatal("Close returned before the goroutine ended")
	}
	if closed.Err() != nil || len(closed.All()) == 0 {
		t.Errorf("after Close: error %v, %d books held", closed.Err(), len(closed.All()))
	}
	closed.Take()
	if taken, err := closed.Wait(ctx); taken != nil || err != nil {
		t.Errorf("Wait after Close: %d books, %v", len(taken), err)
	}

	cancelled, cancel := context.WithCancel(ctx)
	defer cancel()
	latest := client.LatestBooks(cancelled, req)
	defer latest.Close()
	waitBooks(t, latest)
	cancel()
	select {
	case <-latest.Done():
	case <-time.After(stepTimeout):
		t.Fatal("the goroutine goes on after its context was cancelled")
	}
	if err := latest.Err(); !errors.Is(err, context.Canceled) {
		t.Errorf("ended by a cancelled context with %v, want context.Canceled", err)
	}
}

// TestLatestBooksDropsAnotherRunsBooks kills the server and starts another on the same port: its
// replay starts over, slowly enough that it has not yet seen every book when its first book
// arrives. From then on LatestBooks holds the new run's books only: the old run's, which the new
// one has not sent (yet), are gone, not mixed with the new ones.
func TestLatestBooksDropsAnotherRunsBooks(t *testing.T) {
	port := testserver.FreePort(t)
	first := testserver.Start(t, testserver.Options{Port: port, Args: []string{"--rate", "50000", "--loop"}})
	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	defer cancel()
	latest := dial(t, first.Address).LatestBooks(ctx, mbostream.BookStreamRequest{Depth: 1, Backoff: fastRetry})
	defer latest.Close()
	for len(latest.All()) < testserver.SampleInstruments {
		waitBooks(t, latest)
	}
	var oldEpoch string
	for _, b := range latest.All() {
		oldEpoch = b.Epoch
	}

	first.Kill(t)
	// The sample's first book is complete at its record 2,255 and the second one starts at 2,256:
	// at 500 records/s the new run holds one book for 4.5 s.
	testserver.Start(t, testserver.Options{Port: port, Args: []string{"--rate", "500"}})
	var newEpoch string
	for newEpoch == "" {
		for _, b := range waitBooks(t, latest) {
			if b.Epoch != oldEpoch {
				newEpoch = b.Epoch
			}
		}
	}
	fresh := 0
	for key, b := range latest.All() {
		if b.Epoch != newEpoch {
			t.Errorf("book %+v of epoch %q held with the new run's %q", key, b.Epoch, newEpoch)
		} else {
			fresh++
		}
	}
	if fresh >= testserver.SampleInstruments {
		t.Fatalf("the new run had every book at its first message: this test shows nothing")
	}
	if st := latest.Stats(); st.Stream.EpochChanges != 1 || newEpoch == "" {
		t.Errorf("stats %+v, epochs %q then %q; want one epoch change", st, oldEpoch, newEpoch)
	}
}

// waitBooks is the books LatestBooks.Wait hands out, failing the test when it ends or stepTimeout
// passes first.
func waitBooks(t *testing.T, latest *mbostream.LatestBooks) map[mbostream.BookKey]mbostream.LatestBook {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
	defer cancel()
	taken, err := latest.Wait(ctx)
	if err != nil || taken == nil {
		t.Fatalf("Wait: %d books, %v (stats %+v)", len(taken), err, latest.Stats())
	}
	return taken
}

// ageAt is how long before now the server published at tsOut (one machine, one clock).
func ageAt(now time.Time, tsOut uint64) time.Duration {
	return now.Sub(time.Unix(0, int64(tsOut)))
}
