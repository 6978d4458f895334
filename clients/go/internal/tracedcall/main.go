// Command tracedcall makes one ListInstruments call with the Go client's WithTraceparent, logging
// (JSON, on stderr) the trace id the client started, so a test can find that trace in a
// collector. Test tooling only (tests/test_tracing.py).
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/mbostream/mbostream/clients/go/mbostream"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: tracedcall HOST:PORT")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	logger := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	client, err := mbostream.Dial(ctx, os.Args[1], mbostream.WithTraceparent(), mbostream.WithLogger(logger))
	if err != nil {
		fmt.Fprintln(os.Stderr, "tracedcall:", err)
		os.Exit(1)
	}
	defer client.Close()
	instruments, err := client.ListInstruments(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tracedcall:", err)
		os.Exit(1)
	}
	fmt.Println(len(instruments), "instruments")
}
