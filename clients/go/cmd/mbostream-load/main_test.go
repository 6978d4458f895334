package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/mbostream/mbostream/clients/go/internal/testserver"
	"golang.org/x/net/http2"
)

func TestMain(m *testing.M) { testserver.Main(m) }

func TestBadFlagsNameTheFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		flag string
	}{
		{[]string{"--book-streams", "0"}, "--events-streams"},
		{[]string{"--book-streams", "-1"}, "--book-streams"},
		{[]string{"--events-streams", "-2"}, "--events-streams"},
		{[]string{"--depth", "-1"}, "--depth"},
		{[]string{"--max-updates-per-second", "-1"}, "--max-updates-per-second"},
		{[]string{"--max-updates-per-second", "NaN"}, "--max-updates-per-second"},
		{[]string{"--connections", "-1"}, "--connections"},
		{[]string{"--seconds", "0"}, "--seconds"},
		{[]string{"--warmup", "-1"}, "--warmup"},
		{[]string{"--ca-file", "/nonexistent/ca.pem"}, "--ca-file"},
		{[]string{"--ca-file", "main.go"}, "--ca-file"},
		{[]string{"--server-name", "serve"}, "--server-name"},
		{[]string{"--book-windows", "65536,65536"}, "--book-target"},
		{[]string{"--frame-reader", "--ca-file", "main.go"}, "--frame-reader"},
		{[]string{"--book-target", "x:1", "--book-windows", "65536"}, "--book-windows"},
		{[]string{"--book-target", "x:1", "--book-windows", "1024,65536"}, "--book-windows"},
		{[]string{"--book-target", "x:1", "--book-windows", "131072,65536"}, "--book-windows"},
		{[]string{"--book-target", "x:1", "--book-windows", "65536,9999999999"}, "--book-windows"},
		{[]string{"--no-such-flag"}, "no-such-flag"},
		{[]string{"stray"}, "stray"},
	} {
		var stdout, stderr bytes.Buffer
		if code := mainWith(tc.args, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), tc.flag) {
			t.Errorf("%v: exit %d, stderr %q; want 2 naming %s", tc.args, code, stderr.String(), tc.flag)
		}
	}
}

// TestMeasuresARealServer runs the tool against a real server (the sample at 20,000 records/s) and
// checks the document's shape and its internal consistency; no figure depends on timing.
func TestMeasuresARealServer(t *testing.T) {
	srv := testserver.Start(t, testserver.Options{Args: []string{"--rate", "20000", "--loop"}})
	for _, extra := range [][]string{{"--combine", "--spread", "--connections", "2", "--new-updates"}, {}} {
		var stdout, stderr bytes.Buffer
		args := append([]string{"--target", srv.Address, "--book-streams", "4", "--events-streams", "1",
			"--seconds", "1.5", "--warmup", "0.5", "--json"}, extra...)
		if code := mainWith(args, &stdout, &stderr); code != 0 {
			t.Fatalf("%v: exit %d: %s", extra, code, stderr.String())
		}
		var r result
		if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
			t.Fatalf("%v: not one JSON document: %v\n%s", extra, err, stdout.String())
		}
		book, events := r.Book, r.Events
		if book.Streams != 4 || book.Messages == 0 || book.Samples != int64(book.Messages) || book.P50Ms == nil {
			t.Fatalf("%v: book %+v", extra, book)
		}
		if !(0 <= *book.P50Ms && *book.P50Ms <= *book.P99Ms && *book.P99Ms <= *book.P999Ms && *book.P999Ms <= *book.MaxMs) {
			t.Errorf("%v: percentiles out of order: %v %v %v %v", extra, *book.P50Ms, *book.P99Ms, *book.P999Ms, *book.MaxMs)
		}
		if book.MessagesPerSecond != round(float64(book.Messages)/1.5, 1) || len(book.WorstMsEachSecond) != 2 {
			t.Errorf("%v: %v msg/s from %d messages in 1.5 s; worst per second %v", extra, book.MessagesPerSecond, book.Messages, book.WorstMsEachSecond)
		}
		if math.Abs(slices.Max(book.WorstMsEachSecond)-*book.MaxMs) > 0.01 {
			t.Errorf("%v: worst of each second %v, max %v", extra, book.WorstMsEachSecond, *book.MaxMs)
		}
		if events.Streams != 1 || events.Records == 0 || !events.Lossless || events.Gaps+events.Duplicates != 0 {
			t.Errorf("%v: events %+v", extra, events)
		}
		if len(book.Errors)+len(events.Errors) != 0 || r.StreamsEndedEarly != 0 || r.ClientCPUPercent <= 0 {
			t.Errorf("%v: errors %v %v, ended early %d, cpu %v", extra, book.Errors, events.Errors, r.StreamsEndedEarly, r.ClientCPUPercent)
		}
		if book.Unserved+events.Unserved != 0 {
			t.Errorf("%v: %d book and %d events streams unserved", extra, book.Unserved, events.Unserved)
		}
		// Every stream holds its books from their snapshots in the warm-up: each is sampled every
		// millisecond of the 1.5 s window (every instrument of the sample, or 1 when spread).
		held := 4 * testserver.SampleInstruments
		if len(extra) > 0 {
			held = 4
		}
		if book.HeldAgeSamples != int64(held*1500) || book.HeldAgeP50Ms == nil {
			t.Errorf("%v: %d held-age samples, want %d", extra, book.HeldAgeSamples, held*1500)
		} else if !(0 <= *book.HeldAgeP50Ms && *book.HeldAgeP50Ms <= *book.HeldAgeP99Ms && *book.HeldAgeP99Ms <= *book.HeldAgeMaxMs) {
			t.Errorf("%v: held age out of order: %v %v %v", extra, *book.HeldAgeP50Ms, *book.HeldAgeP99Ms, *book.HeldAgeMaxMs)
		}
		if spread := len(extra) > 0; spread != (len(r.Config.SpreadInstruments) == 4) || spread != r.Config.NewUpdates {
			t.Errorf("%v: spread over %v, new updates %v", extra, r.Config.SpreadInstruments, r.Config.NewUpdates)
		}
	}
}

// The keys of the --json document that issue 12 specifies and that `mbostream bench e2e`
// (server/mbostream/tools/bench_e2e.py, _from_go_result) reads: renaming one breaks the bench.
var documentKeys = map[string][]string{
	"": {"book", "events", "client_cpu_percent", "streams_ended_early"},
	"book": {"messages", "messages_per_second", "books", "deepest_side", "p50_ms", "p99_ms", "p999_ms", "max_ms",
		"streams", "conflated", "samples", "worst_ms_each_second", "unserved", "errors",
		"held_age_samples", "held_age_p50_ms", "held_age_p99_ms", "held_age_max_ms"},
	"events": {"records", "records_per_second", "lossless", "gaps", "duplicates", "resource_exhausted",
		"streams", "batches", "records_missed", "out_of_range", "batch_p50_ms", "batch_p99_ms", "batch_max_ms", "unserved", "errors"},
}

// TestStreamsTheServerRefusedAreCountedUnserved: a server that lets one client address hold two
// streams refuses the other two of four (RESOURCE_EXHAUSTED, retried by the library until the run
// ends); they got nothing, so no figure covers them, and the document and the summary say so.
func TestStreamsTheServerRefusedAreCountedUnserved(t *testing.T) {
	srv := testserver.Start(t, testserver.Options{Args: []string{"--rate", "20000", "--loop", "--max-streams-per-peer", "2"}})
	var stdout, stderr bytes.Buffer
	args := []string{"--target", srv.Address, "--book-streams", "3", "--events-streams", "1", "--seconds", "1", "--warmup", "0.5", "--json"}
	if code := mainWith(args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var r result
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("not one JSON document: %v\n%s", err, stdout.String())
	}
	if r.Book.Unserved+r.Events.Unserved != 2 || r.Book.Messages == 0 && r.Events.Records == 0 {
		t.Errorf("4 streams, 2 allowed: %d book and %d events streams unserved, %d messages, %d records",
			r.Book.Unserved, r.Events.Unserved, r.Book.Messages, r.Events.Records)
	}
	if summary := formatSummary(r); !strings.Contains(summary, "UNSERVED: ") {
		t.Errorf("the summary does not say streams went unserved:\n%s", summary)
	}
}

// TestCombineAndDepthChangeWhatTheServerSends: one book stream over every instrument, as asked
// three ways. Without --combine each message carries one book; with it a message carries every
// book that changed (more books than messages); --depth cuts each side to that many levels.
func TestCombineAndDepthChangeWhatTheServerSends(t *testing.T) {
	srv := testserver.Start(t, testserver.Options{Args: []string{"--rate", "20000", "--loop"}})
	run := func(extra ...string) bookDoc {
		var stdout, stderr bytes.Buffer
		args := append([]string{"--target", srv.Address, "--book-streams", "1", "--seconds", "1.5", "--warmup", "0.5", "--json"}, extra...)
		if code := mainWith(args, &stdout, &stderr); code != 0 {
			t.Fatalf("%v: exit %d: %s", extra, code, stderr.String())
		}
		var r result
		if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
			t.Fatalf("%v: not one JSON document: %v", extra, err)
		}
		if r.Book.Messages == 0 {
			t.Fatalf("%v: no book message", extra)
		}
		return r.Book
	}
	if b := run("--depth", "10"); b.Books != b.Messages || b.DeepestSide <= 3 || b.DeepestSide > 10 {
		t.Errorf("--depth 10: %d books in %d messages, deepest side %d levels (want one book a message, 4-10 levels)", b.Books, b.Messages, b.DeepestSide)
	}
	if b := run("--depth", "3"); b.DeepestSide != 3 {
		t.Errorf("--depth 3: deepest side %d levels, want 3", b.DeepestSide)
	}
	if b := run("--depth", "10", "--combine"); b.Books <= b.Messages {
		t.Errorf("--combine: %d books in %d messages, want several books in some messages", b.Books, b.Messages)
	}
}

// TestFlagsReachTheServer runs the tool through a counting proxy: --connections K opens exactly K
// connections (0: one per stream), --spread and --max-updates-per-second bound what each book
// stream receives, and --json prints the documented keys.
func TestFlagsReachTheServer(t *testing.T) {
	const bookStreams, eventsStreams, perSecond, seconds = 3, 1, 2, 1.5
	srv := testserver.Start(t, testserver.Options{Args: []string{"--rate", "20000", "--loop"}})
	for _, tc := range []struct {
		connections, want int
	}{{2, 2}, {0, bookStreams + eventsStreams}} {
		proxy := testserver.StartProxy(t, srv.Address)
		var stdout, stderr bytes.Buffer
		args := []string{"--target", proxy.Address(), "--book-streams", fmt.Sprint(bookStreams),
			"--events-streams", fmt.Sprint(eventsStreams), "--connections", fmt.Sprint(tc.connections),
			"--spread", "--depth", "1", "--max-updates-per-second", fmt.Sprint(perSecond),
			"--seconds", fmt.Sprint(seconds), "--warmup", "0.5", "--json"}
		if code := mainWith(args, &stdout, &stderr); code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, stderr.String())
		}
		if got := proxy.Accepted(); got != tc.want {
			t.Errorf("--connections %d: %d connections, want %d", tc.connections, got, tc.want)
		}
		var doc map[string]any
		if err := json.Unmarshal(stdout.Bytes(), &doc); err != nil {
			t.Fatalf("not one JSON document: %v\n%s", err, stdout.String())
		}
		for section, keys := range documentKeys {
			object := doc
			if section != "" {
				object, _ = doc[section].(map[string]any)
			}
			for _, key := range keys {
				if _, ok := object[key]; !ok {
					t.Errorf("--json has no %q in %q: %s", key, section, stdout.String())
				}
			}
		}
		var r result
		if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		// One instrument per stream, at most perSecond messages a second each (plus the one that
		// may open each second's budget at the window's edges); unlimited, it is a hundred or more.
		if limit := uint64(bookStreams * (perSecond*seconds + 1)); r.Book.Messages == 0 || r.Book.Messages > limit {
			t.Errorf("--max-updates-per-second %d: %d book messages in %g s over %d streams, want 1..%d",
				perSecond, r.Book.Messages, seconds, bookStreams, limit)
		}
		if len(r.Config.SpreadInstruments) != bookStreams || !r.Events.Lossless {
			t.Errorf("spread over %v; events %+v", r.Config.SpreadInstruments, r.Events)
		}
	}
}

// TestBookTargetTakesTheBookStreamsToTheNativePort: with --book-target the book streams read a
// server's --book-port (StreamBook on the native transport) and the events stream its gRPC port;
// with --spread and no events stream, the instruments are still listed on --target.
func TestBookTargetTakesTheBookStreamsToTheNativePort(t *testing.T) {
	bookPort := testserver.FreePort(t)
	srv := testserver.Start(t, testserver.Options{Args: []string{"--rate", "20000", "--loop", "--book-port", fmt.Sprint(bookPort)}})
	bookTarget := fmt.Sprintf("127.0.0.1:%d", bookPort)
	for _, extra := range [][]string{{"--events-streams", "1", "--combine"}, {"--events-streams", "0", "--spread"}} {
		var stdout, stderr bytes.Buffer
		args := append([]string{"--target", srv.Address, "--book-target", bookTarget, "--book-streams", "4",
			"--seconds", "1", "--warmup", "0.5", "--json"}, extra...)
		if code := mainWith(args, &stdout, &stderr); code != 0 {
			t.Fatalf("%v: exit %d: %s", extra, code, stderr.String())
		}
		var r result
		if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
			t.Fatalf("%v: not one JSON document: %v\n%s", extra, err, stdout.String())
		}
		if r.Config.BookTarget != bookTarget || r.Book.Streams != 4 || r.Book.Messages == 0 || r.Book.Unserved != 0 || len(r.Book.Errors) != 0 {
			t.Fatalf("%v: book streams over %s: %+v", extra, bookTarget, r.Book)
		}
		if wantEvents := extra[1] == "1"; wantEvents && (r.Events.Records == 0 || !r.Events.Lossless) {
			t.Errorf("%v: events over %s: %+v", extra, srv.Address, r.Events)
		}
		if spread := extra[2] == "--spread"; spread != (len(r.Config.SpreadInstruments) == 4) {
			t.Errorf("%v: spread over %v", extra, r.Config.SpreadInstruments)
		}
		if summary := formatSummary(r); !strings.Contains(summary, "(book streams: "+bookTarget+")") {
			t.Errorf("%v: the summary does not name the book target:\n%s", extra, summary)
		}
	}
}

// TestBookWindowsAreTheBookConnectionsOwn: --book-windows sets the receive windows of the book
// streams' connections (SETTINGS_INITIAL_WINDOW_SIZE the stream's, the connection's raised to its
// own by the first WINDOW_UPDATE), read off a proxy in front of the book port; the document and the
// summary say so.
func TestBookWindowsAreTheBookConnectionsOwn(t *testing.T) {
	const stream, conn = 65536, 262144
	bookPort := testserver.FreePort(t)
	srv := testserver.Start(t, testserver.Options{Args: []string{"--rate", "20000", "--loop", "--book-port", fmt.Sprint(bookPort)}})
	proxy := testserver.StartProxy(t, fmt.Sprintf("127.0.0.1:%d", bookPort))
	var stdout, stderr bytes.Buffer
	args := []string{"--target", srv.Address, "--book-target", proxy.Address(), "--book-streams", "2", "--connections", "1",
		"--events-streams", "0", "--book-windows", fmt.Sprintf("%d,%d", stream, conn), "--seconds", "1", "--warmup", "0.5", "--json"}
	if code := mainWith(args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var r result
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("not one JSON document: %v\n%s", err, stdout.String())
	}
	if r.Config.BookWindows == nil || *r.Config.BookWindows != [2]int32{stream, conn} || r.Book.Messages == 0 {
		t.Fatalf("book_windows %v, %d book messages", r.Config.BookWindows, r.Book.Messages)
	}
	if summary := formatSummary(r); !strings.Contains(summary, "receive windows 65536 B a stream, 262144 B the connection") {
		t.Errorf("the summary does not give the windows:\n%s", summary)
	}
	sent := testserver.ReadClientFrames(t, proxy.ClientBytes())
	if got := sent.Settings[http2.SettingInitialWindowSize]; got != stream {
		t.Errorf("SETTINGS_INITIAL_WINDOW_SIZE %d, want %d", got, stream)
	}
	if len(sent.ConnUpdates) == 0 || sent.ConnUpdates[0] != conn-65535 {
		t.Errorf("the connection's WINDOW_UPDATEs %v, want the first to raise it from 65,535 to %d", sent.ConnUpdates, conn)
	}
}

// TestCAFileSpeaksTLSToBothPorts: --ca-file connects every stream over TLS, the book streams to the
// server's native book port (rustls there, grpc-go here), the events to its gRPC port; a server
// name the certificate does not carry fails the dial.
func TestCAFileSpeaksTLSToBothPorts(t *testing.T) {
	pki := testserver.NewTLS(t)
	bookPort := testserver.FreePort(t)
	srv := testserver.Start(t, testserver.Options{Args: []string{"--rate", "20000", "--loop", "--book-port", fmt.Sprint(bookPort)}, TLS: pki})
	bookTarget := fmt.Sprintf("127.0.0.1:%d", bookPort)
	var stdout, stderr bytes.Buffer
	args := []string{"--target", srv.Address, "--book-target", bookTarget, "--book-streams", "3", "--events-streams", "1",
		"--ca-file", pki.CAFile(), "--seconds", "1", "--warmup", "0.5", "--json"}
	if code := mainWith(args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var r result
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("not one JSON document: %v\n%s", err, stdout.String())
	}
	if !r.Config.TLS || r.Book.Messages == 0 || r.Book.Unserved != 0 || len(r.Book.Errors) != 0 {
		t.Fatalf("book streams over TLS to %s: tls=%v %+v", bookTarget, r.Config.TLS, r.Book)
	}
	if r.Events.Records == 0 || !r.Events.Lossless {
		t.Errorf("events over TLS to %s: %+v", srv.Address, r.Events)
	}
	stdout.Reset()
	stderr.Reset()
	wrongName := append(args[:len(args)-1:len(args)-1], "--server-name", "not-the-server", "--json")
	if code := mainWith(wrongName, &stdout, &stderr); code == 0 {
		t.Errorf("--server-name not-the-server: exit 0, want a failed dial\n%s", stdout.String())
	}
}

// runJSON runs the tool with args and decodes its document; a non-zero exit fails the test.
func runJSON(t *testing.T, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if code := mainWith(append(args, "--json"), &stdout, &stderr); code != 0 {
		t.Fatalf("%v: exit %d: %s", args, code, stderr.String())
	}
	var r result
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("%v: not one JSON document: %v\n%s", args, err, stdout.String())
	}
	return r
}

// TestFrameReaderMeasuresLikeTheGRPCReader: --frame-reader reads the same streams, on the native
// book port and on the gRPC port, with the same accounting: every held book sampled every ms of
// the window, books cut to the depth asked, several books a message with --combine.
func TestFrameReaderMeasuresLikeTheGRPCReader(t *testing.T) {
	bookPort := testserver.FreePort(t)
	srv := testserver.Start(t, testserver.Options{Args: []string{"--rate", "20000", "--loop", "--book-port", fmt.Sprint(bookPort)}})
	bookTarget := fmt.Sprintf("127.0.0.1:%d", bookPort)
	for _, extra := range [][]string{{"--book-target", bookTarget, "--combine"}, {"--spread"}} {
		args := append([]string{"--target", srv.Address, "--frame-reader", "--book-streams", "4", "--connections", "2",
			"--events-streams", "1", "--depth", "3", "--seconds", "1.5", "--warmup", "0.5"}, extra...)
		r := runJSON(t, args...)
		book := r.Book
		if !r.Config.FrameReader || book.Streams != 4 || book.Messages == 0 || book.Unserved != 0 || len(book.Errors) != 0 || r.StreamsEndedEarly != 0 {
			t.Fatalf("%v: %+v, frame reader %v, ended early %d", extra, book, r.Config.FrameReader, r.StreamsEndedEarly)
		}
		if book.DeepestSide != 3 {
			t.Errorf("%v: deepest side %d, want the depth asked (3)", extra, book.DeepestSide)
		}
		combined := extra[len(extra)-1] == "--combine"
		if combined != (book.Books > book.Messages) {
			t.Errorf("%v: %d books in %d messages", extra, book.Books, book.Messages)
		}
		held := 4 * testserver.SampleInstruments
		if !combined {
			held = 4 // spread: one book a stream
		}
		if book.HeldAgeSamples != int64(held*1500) {
			t.Errorf("%v: %d held-age samples, want %d", extra, book.HeldAgeSamples, held*1500)
		}
		if !r.Events.Lossless || r.Events.Records == 0 {
			t.Errorf("%v: events %+v", extra, r.Events)
		}
	}
	var stdout, stderr bytes.Buffer
	if code := mainWith([]string{"--target", srv.Address, "--frame-reader", "--book-streams", "1", "--seconds", "0.5", "--warmup", "0.2"}, &stdout, &stderr); code != 0 ||
		!strings.Contains(stdout.String(), "book streams read by the frame reader") {
		t.Errorf("exit %d; the summary does not say who read the books:\n%s%s", code, stdout.String(), stderr.String())
	}
}

// TestFrameReaderGrantsFlowControlCredit: whole L3 books (messages over many DATA frames) through
// 64 KiB windows. Without the reader's WINDOW_UPDATEs the server could send one window and no more:
// a few messages. It keeps receiving, so messages are reassembled across frames and credit returned.
func TestFrameReaderGrantsFlowControlCredit(t *testing.T) {
	bookPort := testserver.FreePort(t)
	srv := testserver.Start(t, testserver.Options{Args: []string{"--rate", "20000", "--loop", "--book-port", fmt.Sprint(bookPort)}})
	r := runJSON(t, "--target", srv.Address, "--book-target", fmt.Sprintf("127.0.0.1:%d", bookPort), "--frame-reader",
		"--book-streams", "1", "--events-streams", "0", "--depth", "0", "--book-windows", "65536,65536", "--seconds", "1", "--warmup", "0.5")
	if r.Book.Messages < 50 || r.Book.DeepestSide <= 10 || len(r.Book.Errors) != 0 {
		t.Errorf("whole books through 64 KiB windows: %d messages, deepest side %d levels, errors %v", r.Book.Messages, r.Book.DeepestSide, r.Book.Errors)
	}
}

// TestFrameReaderReportsWhatTheServerRefused: a server that lets one address hold two streams ends
// the third with RESOURCE_EXHAUSTED in its trailers; the frame reader reports it as that stream's
// error, and the stream as unserved, while the other two are measured.
func TestFrameReaderReportsWhatTheServerRefused(t *testing.T) {
	srv := testserver.Start(t, testserver.Options{Args: []string{"--rate", "20000", "--loop", "--max-streams-per-peer", "2"}})
	r := runJSON(t, "--target", srv.Address, "--frame-reader", "--book-streams", "3", "--connections", "1", "--events-streams", "0",
		"--seconds", "1", "--warmup", "0.5")
	refused := 0
	for message, n := range r.Book.Errors {
		if strings.Contains(message, "grpc-status 8") {
			refused += n
		}
	}
	if r.Book.Unserved != 1 || refused != 1 || r.Book.Messages == 0 {
		t.Errorf("3 streams, 2 allowed: %d unserved, errors %v, %d messages", r.Book.Unserved, r.Book.Errors, r.Book.Messages)
	}
}
