package mbostream_test

// Shared test helpers: a Client on a real server (internal/testserver), a Go gRPC server of the
// test's own, the test's own continuity check of what a stream handed out, and bounds on every wait.

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	v1 "github.com/mbostream/mbostream/clients/go/gen/mbostream/v1"
	"github.com/mbostream/mbostream/clients/go/internal/testserver"
	"github.com/mbostream/mbostream/clients/go/mbostream"
)

const (
	// stepTimeout bounds any single wait inside a test.
	stepTimeout = 20 * time.Second
	// scenarioTimeout bounds a whole test.
	scenarioTimeout = 120 * time.Second
	controlToken    = testserver.ControlToken
)

func TestMain(m *testing.M) { testserver.Main(m) }

// dial connects a Client (logging to the test) and closes it at the end of the test.
func dial(t *testing.T, target string, opts ...mbostream.Option) *mbostream.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
	defer cancel()
	client, err := mbostream.Dial(ctx, target, append([]mbostream.Option{mbostream.WithLogger(testLogger(t))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

// serveMarketData serves impl from a gRPC server on a free loopback port, stopped at the end of the
// test, and returns its address.
func serveMarketData(t *testing.T, impl v1.MarketDataServiceServer) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	v1.RegisterMarketDataServiceServer(srv, impl)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return l.Addr().String()
}

// testLogger sends the client's log to the test's log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// next is the stream's next batch, failing the test when the stream ended.
func next(t *testing.T, s *mbostream.EventStream) *mbostream.EventBatch {
	t.Helper()
	if !s.Next() {
		t.Fatalf("the stream ended: %v (stats %+v)", s.Err(), s.Stats())
	}
	return s.Batch()
}

// continuity is the test's own check of what a stream handed out: within one snapshot's life,
// the live records of an unfiltered stream follow each other with no gap and no duplicate.
type continuity struct {
	last      uint64
	known     bool
	snapshots int
	live      uint64
	epochs    []string
}

// add checks one batch; it fails the test at the first discontinuity.
func (c *continuity) add(t *testing.T, b *mbostream.EventBatch) {
	t.Helper()
	if b.NewSnapshot {
		c.snapshots++
		c.known = false
	}
	if len(c.epochs) == 0 || c.epochs[len(c.epochs)-1] != b.Epoch {
		c.epochs = append(c.epochs, b.Epoch)
	}
	if b.Snapshot {
		for i := range b.Len() {
			if b.ReplaySequence[i] != b.BatchSequence || !mbostream.Flags(b.Flags[i]).Has(mbostream.FlagSnapshot) {
				t.Fatalf("snapshot record %d: replay_sequence %d (batch %d), flags %s",
					i, b.ReplaySequence[i], b.BatchSequence, mbostream.Flags(b.Flags[i]))
			}
		}
		c.last, c.known = b.BatchSequence, true
		return
	}
	for _, seq := range b.ReplaySequence {
		if c.known && seq != c.last+1 {
			t.Fatalf("live replay_sequence %d after %d: a gap or a duplicate", seq, c.last)
		}
		c.last, c.known = seq, true
	}
	c.live += uint64(b.Len())
}
