// Command followevents follows StreamEvents through the Go client's EventStream (reconnect and
// resume included) and prints each live batch as one line, "FIRST LAST COUNT", so a test can check
// the replay positions it collected are exactly contiguous across server kills. It starts at the
// live edge of every instrument and runs until SIGTERM/SIGINT; a final line "stats CONNECTIONS
// RESUMES REBUILDS" tells how often it reconnected. Test tooling only (tests/test_cluster.py).
package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/mbostream/mbostream/clients/go/mbostream"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: followevents HOST:PORT")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	dialCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	client, err := mbostream.Dial(dialCtx, os.Args[1])
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "followevents:", err)
		os.Exit(1)
	}
	defer client.Close()
	out := bufio.NewWriter(os.Stdout)
	backoff := mbostream.Backoff{Base: 20 * time.Millisecond, Factor: 2, Cap: 500 * time.Millisecond}
	stream := client.StreamEvents(ctx, mbostream.EventsRequest{Backoff: backoff})
	for stream.Next() {
		b := stream.Batch()
		if b.Snapshot || b.Len() == 0 {
			continue
		}
		fmt.Fprintf(out, "%d %d %d\n", b.ReplaySequence[0], b.ReplaySequence[b.Len()-1], b.Len())
		out.Flush()
	}
	st := stream.Stats()
	fmt.Fprintf(out, "stats %d %d %d\n", st.Connections, st.Resumes, st.Rebuilds)
	out.Flush()
	if err := stream.Err(); err != nil && ctx.Err() == nil {
		fmt.Fprintln(os.Stderr, "followevents:", err)
		os.Exit(1)
	}
}
