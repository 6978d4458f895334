// Command mbostream-load measures an mbostream server from a Go client: N StreamBook streams and
// M StreamEvents streams spread over K HTTP/2 connections, for a warm-up and then a measured
// window.
//
// Book latency is the client's receive time minus the message's ts_out (server publish time; one
// machine, one clock), in an HDR histogram: p50, p99, p99.9, max, and the worst in each second.
// Event streams report records per second, batch latency, and the continuity of replay_sequence:
// gaps, duplicates, RESOURCE_EXHAUSTED cut-offs (each resumed) and OUT_OF_RANGE (re-snapshotted).
//
//	mbostream-load --target 127.0.0.1:50051 --book-streams 100 --events-streams 1 --combine --json
//
// `mbostream bench e2e` runs it as its client. The JSON document:
//
//	{"book": {"messages", "messages_per_second", "p50_ms", "p99_ms", "p999_ms", "max_ms", …},
//	 "events": {"records", "records_per_second", "lossless", "gaps", "duplicates",
//	            "resource_exhausted", …},
//	 "client_cpu_percent"}
package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"
)

// config is the validated command line.
type config struct {
	target        string
	bookTarget    string
	bookStreams   int
	eventsStreams int
	combine       bool
	// newUpdates: each book message decoded into new memory (--new-updates), not into the stream's
	// own (BookStreamRequest.ReuseUpdates).
	newUpdates          bool
	spread              bool
	depth               int
	maxUpdatesPerSecond float64
	connections         int
	seconds             time.Duration
	warmup              time.Duration
	json                bool
	// bookWindows: the HTTP/2 receive windows (stream, connection) of the book streams' own
	// connections (--book-windows, with --book-target); zero: the client's defaults.
	bookWindows [2]int32
	// frameReader: the book streams read from HTTP/2 frames by the tool itself, one goroutine a
	// connection, not by gRPC-Go (--frame-reader; framereader.go).
	frameReader bool
	// tls: connect over TLS (--ca-file: the servers' CA, --server-name: the name their
	// certificates carry); nil: plaintext.
	tls *tls.Config
}

func main() {
	os.Exit(mainWith(os.Args[1:], os.Stdout, os.Stderr))
}

func mainWith(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		if err != flag.ErrHelp {
			fmt.Fprintln(stderr, "mbostream-load:", err)
		}
		return 2
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	m, err := run(cfg, logger)
	if err != nil {
		fmt.Fprintln(stderr, "mbostream-load:", err)
		return 1
	}
	result := summarise(m)
	if cfg.json {
		err = writeJSON(stdout, result)
	} else {
		_, err = io.WriteString(stdout, formatSummary(result))
	}
	if err != nil {
		fmt.Fprintln(stderr, "mbostream-load:", err)
		return 1
	}
	return 0
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var cfg config
	var seconds, warmup float64
	fs := flag.NewFlagSet("mbostream-load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.target, "target", "127.0.0.1:50051", "HOST:PORT of the server")
	fs.StringVar(&cfg.bookTarget, "book-target", "", "HOST:PORT the StreamBook streams use instead of --target (a server's --book-port)")
	fs.IntVar(&cfg.bookStreams, "book-streams", 1, "concurrent StreamBook streams")
	fs.IntVar(&cfg.eventsStreams, "events-streams", 0, "concurrent StreamEvents streams (every instrument each)")
	fs.BoolVar(&cfg.combine, "combine", false, "book streams ask for combine_books (one message per refresh)")
	fs.BoolVar(&cfg.newUpdates, "new-updates", false, "decode each book message into new memory, as a client that keeps every update does (default: into the same memory, the library's ReuseUpdates)")
	fs.BoolVar(&cfg.spread, "spread", false, "each book stream watches one instrument (round-robin), not every book")
	fs.IntVar(&cfg.depth, "depth", 10, "levels per side of the book streams (0: full books)")
	fs.Float64Var(&cfg.maxUpdatesPerSecond, "max-updates-per-second", 0, "per-book limit asked by the book streams (0: none)")
	fs.IntVar(&cfg.connections, "connections", 0, "HTTP/2 connections the streams are spread over (0: one per stream)")
	fs.BoolVar(&cfg.frameReader, "frame-reader", false, "read the book streams from HTTP/2 frames, one goroutine a connection, instead of with gRPC-Go (plaintext only; no reconnection): a cheaper client, to measure more streams than gRPC-Go reads on one core")
	var bookWindows string
	fs.StringVar(&bookWindows, "book-windows", "", "STREAM,CONN: the HTTP/2 receive windows, bytes, of the book streams' connections (needs --book-target or --frame-reader; default: the client's, 4 MiB,16 MiB)")
	fs.Float64Var(&seconds, "seconds", 10, "length of the measured window, seconds")
	fs.Float64Var(&warmup, "warmup", 1, "seconds streamed before the window opens")
	fs.BoolVar(&cfg.json, "json", false, "print one JSON object")
	var caFile, serverName string
	fs.StringVar(&caFile, "ca-file", "", "connect over TLS, trusting this CA (PEM); without it: plaintext")
	fs.StringVar(&serverName, "server-name", "", "with --ca-file: the name the servers' certificates carry (default: the target's host)")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	switch {
	case cfg.bookStreams < 0:
		return cfg, fmt.Errorf("--book-streams must be >= 0, got %d", cfg.bookStreams)
	case cfg.eventsStreams < 0:
		return cfg, fmt.Errorf("--events-streams must be >= 0, got %d", cfg.eventsStreams)
	case cfg.bookStreams+cfg.eventsStreams == 0:
		return cfg, fmt.Errorf("--book-streams and --events-streams are both 0: nothing to measure")
	case cfg.depth < 0 || cfg.depth > 1<<31:
		return cfg, fmt.Errorf("--depth must be >= 0, got %d", cfg.depth)
	case !(cfg.maxUpdatesPerSecond >= 0):
		return cfg, fmt.Errorf("--max-updates-per-second must be >= 0, got %g", cfg.maxUpdatesPerSecond)
	case cfg.connections < 0:
		return cfg, fmt.Errorf("--connections must be >= 0, got %d", cfg.connections)
	case !(seconds > 0):
		return cfg, fmt.Errorf("--seconds must be > 0, got %g", seconds)
	case !(warmup >= 0):
		return cfg, fmt.Errorf("--warmup must be >= 0, got %g", warmup)
	}
	if cfg.frameReader && caFile != "" {
		return cfg, fmt.Errorf("--frame-reader speaks plaintext HTTP/2 only: not with --ca-file")
	}
	if bookWindows != "" {
		if cfg.bookTarget == "" && !cfg.frameReader {
			return cfg, fmt.Errorf("--book-windows needs --book-target or --frame-reader (the events streams' connections keep the client's windows)")
		}
		stream, conn, ok := strings.Cut(bookWindows, ",")
		s, err1 := strconv.ParseInt(stream, 10, 32)
		c, err2 := strconv.ParseInt(conn, 10, 32)
		if !ok || err1 != nil || err2 != nil || s < 64<<10 || c < s {
			return cfg, fmt.Errorf("--book-windows must be STREAM,CONN in bytes, the stream's at least 65536 and the connection's at least the stream's; got %q", bookWindows)
		}
		cfg.bookWindows = [2]int32{int32(s), int32(c)}
	}
	if serverName != "" && caFile == "" {
		return cfg, fmt.Errorf("--server-name needs --ca-file")
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return cfg, fmt.Errorf("--ca-file: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return cfg, fmt.Errorf("--ca-file: no PEM certificate in %s", caFile)
		}
		cfg.tls = &tls.Config{RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS12}
	}
	cfg.seconds = time.Duration(seconds * float64(time.Second))
	cfg.warmup = time.Duration(warmup * float64(time.Second))
	return cfg, nil
}
