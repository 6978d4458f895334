package mbostream_test

// Dial's transport options against real servers: TLS and mutual TLS with a throw-away CA, the
// operator token over TLS and the server's throttle of wrong ones, the message size limit,
// keepalive noticing a link that went silent (a proxy that stops forwarding without closing), and
// the flow-control windows (the frames the client sends, read off a proxy).

import (
	"context"
	"errors"
	"testing"
	"time"

	"golang.org/x/net/http2"

	v1 "github.com/mbostream/mbostream/clients/go/gen/mbostream/v1"
	"github.com/mbostream/mbostream/clients/go/internal/testserver"
	"github.com/mbostream/mbostream/clients/go/mbostream"
)

// refusedDialTimeout bounds a Dial that must fail: the transport retries until the context ends.
const refusedDialTimeout = 3 * time.Second

// dialErr is the error of a Dial that must fail (closing the client if it did not).
func dialErr(t *testing.T, target string, opts ...mbostream.Option) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), refusedDialTimeout)
	defer cancel()
	client, err := mbostream.Dial(ctx, target, append([]mbostream.Option{mbostream.WithLogger(testLogger(t))}, opts...)...)
	if err == nil {
		_ = client.Close()
		t.Fatalf("Dial(%s) succeeded", target)
	}
	return err
}

// TestTLSAndOperatorToken: a server over mutual TLS is reached with WithTLS (its CA, a client
// certificate), the token goes with every ReplayService call, and what is not allowed is refused:
// plaintext, an unknown CA, no client certificate, and an address that keeps trying wrong tokens.
func TestTLSAndOperatorToken(t *testing.T) {
	pki := testserver.NewTLS(t)
	srv := testserver.Start(t, testserver.Options{Args: []string{"--rate", "20000", "--loop"}, TLS: pki, MutualTLS: true})
	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	defer cancel()

	client := dial(t, srv.Address, mbostream.WithTLS(pki.ClientConfig(true)), mbostream.WithBearerToken(controlToken))
	if _, err := client.ListInstruments(ctx); err != nil {
		t.Fatalf("ListInstruments over mutual TLS: %v", err)
	}
	status, err := v1.NewReplayServiceClient(client.Conn()).GetStatus(ctx, &v1.GetStatusRequest{})
	if err != nil {
		t.Fatalf("GetStatus with the token over TLS: %v", mbostream.ErrorFromStatus("GetStatus", err))
	}
	if status.GetStatus().GetEpoch() == "" {
		t.Error("GetStatus over TLS carries no epoch")
	}
	s := client.StreamEvents(ctx, mbostream.EventsRequest{WithSnapshot: true})
	var check continuity
	for check.live < 1_000 {
		check.add(t, next(t, s))
	}
	s.Close()

	for _, tc := range []struct {
		name string
		opts []mbostream.Option
	}{
		{"plaintext", nil},
		{"an unknown CA (the system roots)", []mbostream.Option{mbostream.WithTLS(nil)}},
	} {
		if err := dialErr(t, srv.Address, tc.opts...); !errors.Is(err, mbostream.ErrUnavailable) {
			t.Errorf("Dial with %s: %v, want ErrUnavailable", tc.name, err)
		}
	}
	// Without a client certificate the handshake may complete on the client's side (TLS 1.3) and
	// the server's refusal arrive with the first call: either way nothing gets through.
	ctxNoCert, cancelNoCert := context.WithTimeout(ctx, refusedDialTimeout)
	defer cancelNoCert()
	noCert, err := mbostream.Dial(ctxNoCert, srv.Address, mbostream.WithTLS(pki.ClientConfig(false)), mbostream.WithLogger(testLogger(t)))
	if err == nil {
		defer noCert.Close()
		_, err = noCert.ListInstruments(ctxNoCert)
	}
	if !errors.Is(err, mbostream.ErrUnavailable) {
		t.Errorf("mutual TLS without a client certificate: %v, want ErrUnavailable", err)
	}

	// Wrong tokens from one address: UNAUTHENTICATED, then RESOURCE_EXHAUSTED for every control
	// call (the right token included) until the cool-down ends: ErrAuthThrottled, never taken for
	// the stream limit.
	guesser := dial(t, srv.Address, mbostream.WithTLS(pki.ClientConfig(true)), mbostream.WithBearerToken("a-wrong-token"))
	wrong := 0
	for ; wrong < 50; wrong++ {
		_, err = v1.NewReplayServiceClient(guesser.Conn()).GetStatus(ctx, &v1.GetStatusRequest{})
		if err = mbostream.ErrorFromStatus("GetStatus", err); !errors.Is(err, mbostream.ErrUnauthenticated) {
			break
		}
	}
	if wrong == 0 || !errors.Is(err, mbostream.ErrAuthThrottled) || errors.Is(err, mbostream.ErrStreamLimit) {
		t.Fatalf("after %d wrong tokens: %v, want ErrAuthThrottled", wrong, err)
	}
	_, err = v1.NewReplayServiceClient(client.Conn()).GetStatus(ctx, &v1.GetStatusRequest{})
	if err = mbostream.ErrorFromStatus("GetStatus", err); !errors.Is(err, mbostream.ErrAuthThrottled) {
		t.Errorf("the right token from a throttled address: %v, want ErrAuthThrottled", err)
	}
}

// testMessageSize: a client whose limit is smaller than the server's messages gets
// ErrMessageTooLarge, from a unary call and from each stream, which end instead of reconnecting
// to the same message forever; small answers still pass.
func testMessageSize(ctx context.Context, t *testing.T, srv *testserver.Server, info *v1.InstrumentInfo) {
	const limit = 512
	client := dial(t, srv.Address, mbostream.WithMaxMessageSize(limit))
	symbol := mbostream.Symbol(info.GetSymbol())
	if _, err := client.GetBook(ctx, symbol, mbostream.BookOptions{Depth: 1}); err != nil {
		t.Errorf("a top-of-book within %d bytes: %v", limit, err)
	}
	_, err := client.GetBook(ctx, symbol, mbostream.BookOptions{IncludeOrders: true})
	if !errors.Is(err, mbostream.ErrMessageTooLarge) || errors.Is(err, mbostream.ErrStreamLimit) {
		t.Errorf("GetBook of the full book with orders under a %d-byte limit: %v, want ErrMessageTooLarge", limit, err)
	}
	books := client.StreamBook(ctx, mbostream.BookStreamRequest{Instruments: []mbostream.Instrument{symbol}, IncludeOrders: true, Backoff: fastRetry})
	if books.Next() {
		t.Errorf("StreamBook delivered a full book with orders under a %d-byte limit", limit)
	}
	if err := books.Err(); !errors.Is(err, mbostream.ErrMessageTooLarge) || books.Stats().Connections != 1 {
		t.Errorf("StreamBook under a %d-byte limit: %v after %d connections, want ErrMessageTooLarge after one", limit, err, books.Stats().Connections)
	}
	events := client.StreamEvents(ctx, mbostream.EventsRequest{WithSnapshot: true, Backoff: fastRetry})
	if err := streamErr(events); !errors.Is(err, mbostream.ErrMessageTooLarge) || events.Stats().Connections != 1 {
		t.Errorf("a StreamEvents snapshot under a %d-byte limit: %v after %d connections, want ErrMessageTooLarge after one",
			limit, err, events.Stats().Connections)
	}
}

// TestKeepaliveNoticesADeadLink freezes the proxy between client and server: the connection stays
// open but nothing passes, so only keepalive can tell. With WithKeepalive(10 s, 1 s) the stream
// notices within about 11 s (the default, 30 s + 10 s, would take 40 s), reconnects through the
// proxy and resumes after its last record: no snapshot, no gap, no duplicate.
func TestKeepaliveNoticesADeadLink(t *testing.T) {
	const interval, timeout, bound = 10 * time.Second, time.Second, 25 * time.Second
	srv := testserver.Start(t, testserver.Options{Args: []string{"--rate", "20000", "--loop"}})
	proxy := testserver.StartProxy(t, srv.Address)
	client := dial(t, proxy.Address(), mbostream.WithKeepalive(interval, timeout))
	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	defer cancel()
	s := client.StreamEvents(ctx, mbostream.EventsRequest{WithSnapshot: true, Backoff: fastRetry})
	defer s.Close()
	var check continuity
	for check.live < 2_000 {
		check.add(t, next(t, s))
	}
	frozenAt := time.Now()
	if n := proxy.Freeze(); n != 1 {
		t.Fatalf("froze %d connections, want the client's one", n)
	}
	// What was in flight before the freeze may still arrive; then the stream must come back.
	for s.Stats().Connections < 2 {
		check.add(t, next(t, s))
	}
	before := check.live
	for check.live < before+2_000 {
		check.add(t, next(t, s))
	}
	if took := time.Since(frozenAt); took > bound {
		t.Errorf("the stream took %s to come back from a dead link, want under %s with keepalive %s + %s", took, bound, interval, timeout)
	}
	st := s.Stats()
	if st.Resumes != 1 || st.Snapshots != 1 || st.Rebuilds != 0 || check.snapshots != 1 || st.Gaps+st.Duplicates != 0 {
		t.Errorf("stats %+v, %d snapshots handed out; want one resume and the first snapshot only", st, check.snapshots)
	}
	if n := proxy.Accepted(); n != 2 {
		t.Errorf("the proxy accepted %d connections, want the first and one after the dead link", n)
	}
}

// TestFlowControlWindowsSpareTheServerAPingPerBurst reads what the client sends while events
// stream in. By default it opens fixed windows (SETTINGS_INITIAL_WINDOW_SIZE DefaultStreamWindow;
// the connection's raised to DefaultConnWindow by its first WINDOW_UPDATE) and sends no PING. With
// WithFlowControlWindows(0, 0), gRPC-Go's bandwidth estimate sends PINGs as data arrives (each of
// which the server must read and answer): what shows that this test sees them.
func TestFlowControlWindowsSpareTheServerAPingPerBurst(t *testing.T) {
	srv := testserver.Start(t, testserver.Options{Args: []string{"--rate", "20000", "--loop"}})
	for _, tc := range []struct {
		name      string
		opts      []mbostream.Option
		estimated bool
	}{
		{"default", nil, false},
		{"estimated", []mbostream.Option{mbostream.WithFlowControlWindows(0, 0)}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
			defer cancel()
			proxy := testserver.StartProxy(t, srv.Address)
			client := dial(t, proxy.Address(), tc.opts...)
			events := client.StreamEvents(ctx, mbostream.EventsRequest{})
			for range 50 {
				next(t, events)
			}
			_ = client.Close()
			sent := testserver.ReadClientFrames(t, proxy.ClientBytes())
			if tc.estimated {
				if sent.Pings == 0 {
					t.Errorf("with the windows estimated the client sent no PING: %+v", sent)
				}
				return
			}
			if sent.Pings != 0 {
				t.Errorf("with fixed windows the client sent %d PINGs", sent.Pings)
			}
			if got := sent.Settings[http2.SettingInitialWindowSize]; got != mbostream.DefaultStreamWindow {
				t.Errorf("SETTINGS_INITIAL_WINDOW_SIZE %d, want %d", got, mbostream.DefaultStreamWindow)
			}
			if len(sent.ConnUpdates) == 0 || sent.ConnUpdates[0] != mbostream.DefaultConnWindow-65535 {
				t.Errorf("the connection's WINDOW_UPDATEs %v, want the first to raise it from 65,535 to %d", sent.ConnUpdates, mbostream.DefaultConnWindow)
			}
		})
	}
}
