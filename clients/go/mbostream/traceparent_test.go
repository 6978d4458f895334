package mbostream_test

// WithTraceparent against a real gRPC server on a free port that records the traceparent of
// each call it answers.

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"regexp"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	v1 "github.com/mbostream/mbostream/clients/go/gen/mbostream/v1"
	"github.com/mbostream/mbostream/clients/go/mbostream"
)

var traceparentFormat = regexp.MustCompile(`^00-([0-9a-f]{32})-([0-9a-f]{16})-01$`)

// traceRecorder answers ListInstruments with no instruments and keeps each call's traceparent.
type traceRecorder struct {
	v1.UnimplementedMarketDataServiceServer
	mu   sync.Mutex
	seen [][]string
}

func (r *traceRecorder) ListInstruments(ctx context.Context, _ *v1.ListInstrumentsRequest) (*v1.ListInstrumentsResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	r.mu.Lock()
	r.seen = append(r.seen, md.Get("traceparent"))
	r.mu.Unlock()
	return &v1.ListInstrumentsResponse{}, nil
}

func startRecorder(t *testing.T) (*traceRecorder, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rec := &traceRecorder{}
	srv := grpc.NewServer()
	v1.RegisterMarketDataServiceServer(srv, rec)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return rec, l.Addr().String()
}

func TestWithTraceparentStartsATracePerCallAndLogsItsID(t *testing.T) {
	rec, target := startRecorder(t)
	var log bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	traced := dial(t, target, mbostream.WithTraceparent(), mbostream.WithLogger(logger))
	plain := dial(t, target)
	ctx := context.Background()
	for range 2 {
		if _, err := traced.ListInstruments(ctx); err != nil {
			t.Fatal(err)
		}
	}
	own, ownID := mbostream.NewTraceparent()
	if _, err := traced.ListInstruments(metadata.AppendToOutgoingContext(ctx, "traceparent", own)); err != nil {
		t.Fatal(err)
	}
	if _, err := plain.ListInstruments(ctx); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.seen) != 4 {
		t.Fatalf("%d calls recorded, want 4", len(rec.seen))
	}
	var ids []string
	for _, got := range rec.seen[:2] {
		m := traceparentFormat.FindStringSubmatch(firstOf(got))
		if len(got) != 1 || m == nil {
			t.Fatalf("traceparent %q is not one W3C version-00 sampled header", got)
		}
		ids = append(ids, m[1])
		if !bytes.Contains(log.Bytes(), []byte("trace_id="+m[1])) {
			t.Errorf("trace id %s not logged:\n%s", m[1], log.String())
		}
	}
	if ids[0] == ids[1] {
		t.Errorf("two calls share trace id %s", ids[0])
	}
	if got := rec.seen[2]; len(got) != 1 || got[0] != own {
		t.Errorf("the caller's traceparent %s was replaced: %q", own, got)
	}
	if bytes.Contains(log.Bytes(), []byte(ownID)) {
		t.Errorf("the caller's own trace was logged as started by the client:\n%s", log.String())
	}
	if got := rec.seen[3]; len(got) != 0 {
		t.Errorf("a client without WithTraceparent sent %q", got)
	}
}

func TestNewTraceparentIsValidAndRandom(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		header, id := mbostream.NewTraceparent()
		m := traceparentFormat.FindStringSubmatch(header)
		if m == nil || m[1] != id || m[1] == "00000000000000000000000000000000" || m[2] == "0000000000000000" {
			t.Fatalf("invalid traceparent %q (trace id %q)", header, id)
		}
		if seen[id] {
			t.Fatalf("trace id %s drawn twice", id)
		}
		seen[id] = true
	}
}

func firstOf(values []string) string {
	if len(values) == 0 {
		return ""
	}
	return values[0]
}
