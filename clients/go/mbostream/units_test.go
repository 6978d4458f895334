package mbostream_test

// The pure parts, one table per documented rule: prices, flags, backoff, the status-code mapping
// and batch decoding.

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	v1 "github.com/mbostream/mbostream/clients/go/gen/mbostream/v1"
	"github.com/mbostream/mbostream/clients/go/internal/testserver"
	"github.com/mbostream/mbostream/clients/go/mbostream"
)

func TestFormatPrice(t *testing.T) {
	for _, tc := range []struct {
		price int64
		want  string
	}{
		{65_400_000_000, "65.400000000"},
		{1, "0.000000001"},
		{0, "0.000000000"},
		{-250_000_000, "-0.250000000"},
		{-1_000_000_001, "-1.000000001"},
		{math.MinInt64, "-9223372036.854775808"},
		{math.MaxInt64 - 1, "9223372036.854775806"},
		{mbostream.UndefPrice, ""},
	} {
		if got := mbostream.FormatPrice(tc.price); got != tc.want {
			t.Errorf("FormatPrice(%d) = %q, want %q", tc.price, got, tc.want)
		}
	}
	if allocs := testing.AllocsPerRun(100, func() {
		var buf [32]byte
		_ = mbostream.AppendPrice(buf[:0], 65_400_000_000)
	}); allocs != 0 {
		t.Errorf("AppendPrice into a buffer with room allocates %v times", allocs)
	}
}

func TestParsePrice(t *testing.T) {
	for _, tc := range []struct {
		text string
		want int64
	}{
		{"65.4", 65_400_000_000},
		{"65.400000000", 65_400_000_000},
		{" -0.25 ", -250_000_000},
		{"+3", 3_000_000_000},
		{".5", 500_000_000},
		{"7.", 7_000_000_000},
		{"0.000000001", 1},
	} {
		got, err := mbostream.ParsePrice(tc.text)
		if err != nil || got != tc.want {
			t.Errorf("ParsePrice(%q) = %d, %v; want %d", tc.text, got, err, tc.want)
		}
		if back, _ := mbostream.ParsePrice(mbostream.FormatPrice(got)); back != got {
			t.Errorf("ParsePrice(FormatPrice(%d)) = %d", got, back)
		}
	}
	for _, bad := range []string{"", "-", ".", "1.0000000001", "abc", "1.2.3", "--1", "+-1", "1e9", "9223372037"} {
		if got, err := mbostream.ParsePrice(bad); err == nil {
			t.Errorf("ParsePrice(%q) = %d, want an error", bad, got)
		}
	}
}

func TestFlags(t *testing.T) {
	for _, tc := range []struct {
		flags mbostream.Flags
		want  string
	}{
		{0, "0"},
		{mbostream.FlagLast, "LAST"},
		{mbostream.FlagLast | mbostream.FlagSnapshot, "LAST|SNAPSHOT"},
		{mbostream.FlagTOB | mbostream.FlagMBP | mbostream.FlagBadTsRecv | mbostream.FlagMaybeBadBook, "TOB|MBP|BAD_TS_RECV|MAYBE_BAD_BOOK"},
		{mbostream.FlagLast | 3, "LAST|0x03"},
	} {
		if got := tc.flags.String(); got != tc.want {
			t.Errorf("Flags(%d).String() = %q, want %q", uint8(tc.flags), got, tc.want)
		}
	}
	f := mbostream.FlagLast | mbostream.FlagSnapshot
	if !f.Has(mbostream.FlagSnapshot) || !f.Has(mbostream.FlagLast|mbostream.FlagSnapshot) || f.Has(mbostream.FlagLast|mbostream.FlagTOB) {
		t.Errorf("Has is wrong for %s", f)
	}
}

func TestBackoffBoundsGrowToTheCapWithFullJitter(t *testing.T) {
	b := mbostream.Backoff{Base: 100 * time.Millisecond, Factor: 2, Cap: time.Second}
	wantBounds := []time.Duration{100, 200, 400, 800, 1000, 1000}
	rng := rand.New(rand.NewPCG(1, 2))
	for attempt, want := range wantBounds {
		want *= time.Millisecond
		if got := b.Bound(attempt); got != want {
			t.Errorf("Bound(%d) = %s, want %s", attempt, got, want)
		}
		var largest time.Duration
		for range 1000 {
			d := b.Delay(attempt, rng)
			if d < 0 || d > want {
				t.Fatalf("Delay(%d) = %s, outside [0, %s]", attempt, d, want)
			}
			largest = max(largest, d)
		}
		// Full jitter spreads over the whole range: 1000 draws all below 90% would be p = 1e-46.
		if largest < want*9/10 {
			t.Errorf("Delay(%d) never above %s in 1000 draws", attempt, largest)
		}
	}
	if got := b.Bound(10_000); got != time.Second {
		t.Errorf("Bound(10000) = %s, want the cap", got)
	}
	if (mbostream.Backoff{}).Bound(0) != mbostream.DefaultBackoff.Base {
		t.Error("the zero Backoff is not DefaultBackoff")
	}
}

func TestBackoffValidation(t *testing.T) {
	for _, tc := range []struct {
		backoff mbostream.Backoff
		setting string
	}{
		{mbostream.Backoff{Base: -1, Factor: 2, Cap: time.Second}, "Backoff.Base"},
		{mbostream.Backoff{Base: time.Second, Factor: 0.5, Cap: time.Second}, "Backoff.Factor"},
		{mbostream.Backoff{Base: time.Second, Factor: math.NaN(), Cap: time.Second}, "Backoff.Factor"},
		{mbostream.Backoff{Base: time.Second, Factor: 2, Cap: time.Millisecond}, "Backoff.Cap"},
		{mbostream.Backoff{Base: time.Second, Factor: 2, Cap: time.Second, MaxAttempts: -1}, "Backoff.MaxAttempts"},
	} {
		var cfg *mbostream.ConfigError
		if err := tc.backoff.Validate(); !errors.As(err, &cfg) || cfg.Setting != tc.setting {
			t.Errorf("Validate(%+v) = %v, want a ConfigError on %s", tc.backoff, err, tc.setting)
		}
	}
	if err := (mbostream.Backoff{}).Validate(); err != nil {
		t.Errorf("the zero Backoff is invalid: %v", err)
	}
}

// The server's mapping (server/mbostream/server/interceptors.py), seen from the client.
func TestStatusCodesMapToTypedErrors(t *testing.T) {
	for _, tc := range []struct {
		code    codes.Code
		message string
		kind    error
	}{
		{codes.InvalidArgument, "depth: must be at most 100000", mbostream.ErrInvalidRequest},
		{codes.NotFound, "unknown instrument NOPE", mbostream.ErrInstrumentNotFound},
		{codes.OutOfRange, "replay position 5 is no longer buffered", mbostream.ErrResumeOutOfRange},
		{codes.ResourceExhausted, "slow reader: fell more than 4 batches behind; resume with start_after_sequence=42 or resubscribe with with_snapshot", mbostream.ErrSlowConsumer},
		{codes.ResourceExhausted, "stream limit reached (1 concurrent streams)", mbostream.ErrStreamLimit},
		{codes.ResourceExhausted, "too many failed control-token attempts from ipv4:127.0.0.1:5555: retry in 60 s", mbostream.ErrAuthThrottled},
		{codes.ResourceExhausted, "grpc: received message larger than max (4096 vs. 256)", mbostream.ErrMessageTooLarge},
		{codes.ResourceExhausted, "Received message larger than max (4194305 vs. 4194304)", mbostream.ErrMessageTooLarge},
		{codes.ResourceExhausted, "grpc: message after decompression larger than max (4096 vs. 256)", mbostream.ErrMessageTooLarge},
		{codes.Unauthenticated, "invalid control token", mbostream.ErrUnauthenticated},
		{codes.PermissionDenied, "replay control is disabled", mbostream.ErrPermissionDenied},
		{codes.FailedPrecondition, "the replay is finished", mbostream.ErrPreconditionFailed},
		{codes.Unavailable, "the server is shutting down", mbostream.ErrUnavailable},
		{codes.DeadlineExceeded, "deadline", mbostream.ErrDeadlineExceeded},
	} {
		err := mbostream.ErrorFromStatus("GetBook", status.Error(tc.code, tc.message))
		var rpc *mbostream.RPCError
		if !errors.As(err, &rpc) || rpc.Code != tc.code || rpc.Message != tc.message || rpc.Method != "GetBook" {
			t.Errorf("%s: got %#v", tc.code, err)
			continue
		}
		if !errors.Is(err, tc.kind) {
			t.Errorf("%s %q: errors.Is(%v) is false", tc.code, tc.message, tc.kind)
		}
		// The causes of RESOURCE_EXHAUSTED are exclusive.
		for _, other := range []error{mbostream.ErrSlowConsumer, mbostream.ErrStreamLimit, mbostream.ErrAuthThrottled, mbostream.ErrMessageTooLarge} {
			if other != tc.kind && errors.Is(err, other) {
				t.Errorf("%s %q: also matches %v", tc.code, tc.message, other)
			}
		}
		if status.Code(err) != tc.code {
			t.Errorf("%s: status.Code of the typed error is %s", tc.code, status.Code(err))
		}
	}
	slow := mbostream.ErrorFromStatus("StreamEvents", status.Error(codes.ResourceExhausted,
		"slow reader: fell more than 4 batches behind; resume with start_after_sequence=42 or resubscribe"))
	var rpc *mbostream.RPCError
	if !errors.As(slow, &rpc) || !rpc.HasResumeAfter || rpc.ResumeAfter != 42 {
		t.Errorf("slow reader's resume point not parsed: %#v", slow)
	}
	internal := mbostream.ErrorFromStatus("GetBook", status.Error(codes.Internal, "internal error in GetBook"))
	for _, kind := range []error{mbostream.ErrInvalidRequest, mbostream.ErrUnavailable, mbostream.ErrPreconditionFailed} {
		if errors.Is(internal, kind) {
			t.Errorf("INTERNAL matches %v", kind)
		}
	}
	if !errors.Is(mbostream.ErrorFromStatus("GetBook", status.Error(codes.DeadlineExceeded, "")), context.DeadlineExceeded) {
		t.Error("DEADLINE_EXCEEDED does not match context.DeadlineExceeded")
	}
	if mbostream.ErrorFromStatus("GetBook", nil) != nil {
		t.Error("a nil error maps to a non-nil one")
	}
}

func TestDecodeEventsSharesColumnsAndRejectsRaggedOnes(t *testing.T) {
	m := &v1.StreamEventsResponse{
		BatchSequence: 11, TsOut: 5, Epoch: "e1",
		ReplaySequence: []uint64{10, 11}, TsEvent: []uint64{1, 2}, TsRecv: []uint64{3, 4}, OrderId: []uint64{7, 8},
		Price: []int64{-1, mbostream.UndefPrice}, Size: []uint32{1, 0},
		Action: []byte{mbostream.ActionAdd, mbostream.ActionClear}, Side: []byte{mbostream.SideBid, mbostream.SideNone},
		Flags: []byte{0, byte(mbostream.FlagLast)}, Sequence: []uint32{100, 101},
		InstrumentId: []uint32{9, 9}, PublisherId: []uint32{1, 1},
	}
	b, err := mbostream.DecodeEvents(m)
	if err != nil {
		t.Fatal(err)
	}
	if b.Len() != 2 || &b.Price[0] != &m.Price[0] || &b.Action[0] != &m.Action[0] {
		t.Error("columns were copied, not shared")
	}
	want := mbostream.Record{ReplaySequence: 11, TsEvent: 2, TsRecv: 4, OrderID: 8, Price: mbostream.UndefPrice,
		Action: 'R', Side: 'N', Flags: mbostream.FlagLast, Sequence: 101, InstrumentID: 9, PublisherID: 1}
	if got := b.Record(1); got != want {
		t.Errorf("Record(1) = %+v, want %+v", got, want)
	}
	if b.Epoch != "e1" || b.BatchSequence != 11 || b.TsOut != 5 {
		t.Errorf("batch fields: %+v", b)
	}
	if allocs := testing.AllocsPerRun(100, func() { _ = b.Record(0) }); allocs != 0 {
		t.Errorf("Record allocates %v times", allocs)
	}
	// Wrapping a received message allocates the batch and nothing per record: a 4,096-record
	// message costs the same one allocation as a 2-record one.
	large := &v1.StreamEventsResponse{}
	if err := proto.Unmarshal(realisticBatch(4096), large); err != nil {
		t.Fatal(err)
	}
	for _, msg := range []*v1.StreamEventsResponse{m, large} {
		if allocs := testing.AllocsPerRun(100, func() { _, _ = mbostream.DecodeEvents(msg) }); allocs != 1 {
			t.Errorf("DecodeEvents of %d records allocates %v times, want 1 (the batch)", len(msg.ReplaySequence), allocs)
		}
	}
	m.Side = m.Side[:1]
	var malformed *mbostream.MalformedBatchError
	if _, err := mbostream.DecodeEvents(m); !errors.As(err, &malformed) || malformed.Column != "side" {
		t.Errorf("a ragged side column gave %v", err)
	}
}

func TestDialRejectsBadSettings(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
	defer cancel()
	for _, tc := range []struct {
		target  string
		opt     mbostream.Option
		setting string
	}{
		{"", mbostream.WithCallTimeout(time.Second), "target"},
		{"127.0.0.1:1", mbostream.WithKeepalive(time.Second, time.Second), "WithKeepalive"},
		{"127.0.0.1:1", mbostream.WithMaxMessageSize(0), "WithMaxMessageSize"},
		{"127.0.0.1:1", mbostream.WithCallTimeout(-time.Second), "WithCallTimeout"},
		{"127.0.0.1:1", mbostream.WithFlowControlWindows(1<<20, 1<<19), "WithFlowControlWindows"},
		{"127.0.0.1:1", mbostream.WithFlowControlWindows(1<<15, 1<<20), "WithFlowControlWindows"},
		{"127.0.0.1:1", mbostream.WithFlowControlWindows(0, 1<<20), "WithFlowControlWindows"},
		{"example.com:443", mbostream.WithBearerToken("secret"), "WithBearerToken"},
	} {
		var cfg *mbostream.ConfigError
		if _, err := mbostream.Dial(ctx, tc.target, tc.opt); !errors.As(err, &cfg) || cfg.Setting != tc.setting {
			t.Errorf("Dial(%q, %s) = %v, want a ConfigError on %s", tc.target, tc.setting, err, tc.setting)
		}
	}
}

// A token may go to any host over TLS: the dial is tried (and here finds nothing) rather than
// refused as a setting.
func TestBearerTokenOverTLSIsAllowedToAnyHost(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := mbostream.Dial(ctx, "example.invalid:443", mbostream.WithTLS(nil), mbostream.WithBearerToken("secret"))
	var cfg *mbostream.ConfigError
	if errors.As(err, &cfg) || !errors.Is(err, mbostream.ErrUnavailable) {
		t.Fatalf("Dial over TLS with a token = %v, want ErrUnavailable (tried), not a ConfigError", err)
	}
}

func TestDialGivesUpWhenNothingListens(t *testing.T) {
	port := testserver.FreePort(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := mbostream.Dial(ctx, "127.0.0.1:"+strconv.Itoa(port))
	if !errors.Is(err, mbostream.ErrUnavailable) {
		t.Fatalf("Dial to a closed port = %v, want ErrUnavailable", err)
	}
}
