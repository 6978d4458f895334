// Command followevents follows StreamEvents through the Go client's EventStream (reconnect and
// resume included) and prints each live batch as one line, "FIRST LAST COUNT", so a test can check
// the replay positions it collected are exactly contiguous across server kills. It starts at the
// live edge of every instrument and runs until SIGTERM/SIGINT; a final line "stats CONNECTIONS
// RESUMES REBUILDS OUT_OF_RANGE GAPS DUPLICATES" tells how often it reconnected, started over, and
// why (the last two: discontinuities the client itself caught). With -snapshots, a stream that starts over
// from a snapshot (the server could not resume it) prints "snapshot POSITION" first, so a test can
// tell that explicit restart from a gap. Test tooling only (tests/test_cluster.py,
// tests/test_bus_resync.py).
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/mbostream/mbostream/clients/go/internal/tool"
	"github.com/mbostream/mbostream/clients/go/mbostream"
)

func main() {
	snapshots := flag.Bool("snapshots", false, `print "snapshot POSITION" where the stream starts over from a snapshot`)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	client := tool.Dial(ctx)
	defer client.Close()
	out := bufio.NewWriter(os.Stdout)
	backoff := mbostream.Backoff{Base: 20 * time.Millisecond, Factor: 2, Cap: 500 * time.Millisecond}
	stream := client.StreamEvents(ctx, mbostream.EventsRequest{Backoff: backoff})
	for stream.Next() {
		b := stream.Batch()
		if b.Snapshot || b.Len() == 0 {
			if *snapshots && b.NewSnapshot && b.Len() > 0 {
				fmt.Fprintf(out, "snapshot %d\n", b.ReplaySequence[b.Len()-1])
				out.Flush()
			}
			continue
		}
		fmt.Fprintf(out, "%d %d %d\n", b.ReplaySequence[0], b.ReplaySequence[b.Len()-1], b.Len())
		out.Flush()
	}
	st := stream.Stats()
	fmt.Fprintf(out, "stats %d %d %d %d %d %d\n", st.Connections, st.Resumes, st.Rebuilds, st.OutOfRange, st.Gaps, st.Duplicates)
	out.Flush()
	if err := stream.Err(); err != nil && ctx.Err() == nil {
		tool.Fail(err)
	}
}
