// Command tracedcall makes one ListInstruments call with the Go client's WithTraceparent, logging
// (JSON, on stderr) the trace id the client started, so a test can find that trace in a
// collector. Test tooling only (tests/test_tracing.py).
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/mbostream/mbostream/clients/go/internal/tool"
	"github.com/mbostream/mbostream/clients/go/mbostream"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), tool.DialTimeout)
	defer cancel()
	logger := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	client := tool.Dial(ctx, mbostream.WithTraceparent(), mbostream.WithLogger(logger))
	defer client.Close()
	instruments, err := client.ListInstruments(ctx)
	if err != nil {
		tool.Fail(err)
	}
	fmt.Println(len(instruments), "instruments")
}
