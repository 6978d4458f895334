package main

// Measurement room: N StreamBook and M StreamEvents streams over K connections, each stream its
// own goroutine with its own histogram, merged once the window closes.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	v1 "github.com/mbostream/mbostream/clients/go/gen/mbostream/v1"
	"github.com/mbostream/mbostream/clients/go/mbostream"
)

// Latencies are recorded in microseconds, 1 µs to 10 minutes, to 3 significant digits.
const (
	histogramLowest  = 1
	histogramHighest = int64(10 * time.Minute / time.Microsecond)
	histogramDigits  = 3
)

// window is the measured interval [opens, closes), in ns since the UNIX epoch.
type window struct{ opens, closes int64 }

func (w window) contains(t int64) bool { return w.opens <= t && t < w.closes }

// latencies is one stream's latency record: a histogram, the exact maximum, and the worst
// latency received in each second of the window.
type latencies struct {
	hist  *hdrhistogram.Histogram
	max   int64
	worst []int64 // ns, per second of the window
}

func newLatencies(w window) *latencies {
	seconds := (w.closes - w.opens + int64(time.Second) - 1) / int64(time.Second)
	return &latencies{hist: newHistogram(), worst: make([]int64, max(seconds, 1))}
}

// newHistogram is a histogram of durations in µs, over the range the constants above give.
func newHistogram() *hdrhistogram.Histogram {
	return hdrhistogram.New(histogramLowest, histogramHighest, histogramDigits)
}

// recordNs adds a duration in ns to a histogram in µs, clamped to its range.
func recordNs(h *hdrhistogram.Histogram, ns int64) {
	_ = h.RecordValue(min(max(ns/int64(time.Microsecond), histogramLowest), histogramHighest))
}

// record adds one publish→receive latency observed at now (inside the window).
func (l *latencies) record(w window, now int64, tsOut uint64) {
	latency := max(now-int64(tsOut), 0) // one machine, one clock: never negative but by rounding
	recordNs(l.hist, latency)
	l.max = max(l.max, latency)
	second := min(int((now-w.opens)/int64(time.Second)), len(l.worst)-1)
	l.worst[second] = max(l.worst[second], latency)
}

func (l *latencies) merge(other *latencies) {
	l.hist.Merge(other.hist)
	l.max = max(l.max, other.max)
	for i, v := range other.worst {
		l.worst[i] = max(l.worst[i], v)
	}
}

// bookCounters is what one StreamBook stream saw in the window.
type bookCounters struct {
	lat        *latencies
	held       *heldAges
	messages   uint64
	books      uint64 // books in those messages: more than messages with --combine
	deepest    int    // levels of the deepest side received: at most --depth
	conflated  uint64
	reconnects int
	err        error
}

// eventCounters is what one StreamEvents stream saw: records and latencies in the window, and its
// own continuity check over the whole run, beside the client library's.
type eventCounters struct {
	lat               *latencies
	records           uint64
	batches           uint64
	gaps              int
	duplicates        int
	recordsMissed     uint64
	resourceExhausted int
	outOfRange        int
	epochChanges      int
	err               error
}

// measurement is the raw outcome of a run, before it is summarised.
type measurement struct {
	cfg         config
	window      window
	book        []*bookCounters
	events      []*eventCounters
	endedEarly  int
	cpuSeconds  float64
	wallSeconds float64
	instruments []string
}

// dial connects one client, within 10 s.
func dial(ctx context.Context, target string, cfg config, logger *slog.Logger, extra ...mbostream.Option) (*mbostream.Client, error) {
	dialCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	options := append([]mbostream.Option{mbostream.WithLogger(logger)}, extra...)
	if cfg.tls != nil {
		options = append(options, mbostream.WithTLS(cfg.tls.Clone()))
	}
	return mbostream.Dial(dialCtx, target, options...)
}

// connectionsFor is how many connections streams are spread over: --connections, or one per
// stream, and never more connections than streams.
func connectionsFor(cfg config, streams int) int {
	if cfg.connections > 0 {
		return max(1, min(cfg.connections, streams))
	}
	return max(1, streams)
}

// dialPools connects the clients the book and the events streams take turns on: one pool of
// --connections (or one per stream) for both, or with --book-target one pool each, the book
// streams' to that target; and every client, to close.
func dialPools(ctx context.Context, cfg config, logger *slog.Logger) (books, events, all []*mbostream.Client, err error) {
	pool := func(target string, n int, extra ...mbostream.Option) ([]*mbostream.Client, error) {
		clients := make([]*mbostream.Client, 0, n)
		for range n {
			client, err := dial(ctx, target, cfg, logger, extra...)
			if err != nil {
				for _, c := range clients {
					c.Close()
				}
				return nil, err
			}
			clients = append(clients, client)
		}
		return clients, nil
	}
	if cfg.bookTarget == "" {
		shared, err := pool(cfg.target, connectionsFor(cfg, cfg.bookStreams+cfg.eventsStreams))
		return shared, shared, shared, err
	}
	if cfg.bookStreams > 0 {
		var windows []mbostream.Option
		if cfg.bookWindows != [2]int32{} {
			windows = append(windows, mbostream.WithFlowControlWindows(cfg.bookWindows[0], cfg.bookWindows[1]))
		}
		if books, err = pool(cfg.bookTarget, connectionsFor(cfg, cfg.bookStreams), windows...); err != nil {
			return nil, nil, nil, err
		}
	}
	if cfg.eventsStreams > 0 {
		if events, err = pool(cfg.target, connectionsFor(cfg, cfg.eventsStreams)); err != nil {
			for _, c := range books {
				c.Close()
			}
			return nil, nil, nil, err
		}
	}
	return books, events, append(append([]*mbostream.Client{}, books...), events...), nil
}

// run dials the connections, runs every stream until the window closes, and collects counters.
func run(cfg config, logger *slog.Logger) (*measurement, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	total := cfg.bookStreams + cfg.eventsStreams
	// With --book-target the book streams have connections of their own, to that port.
	// With --frame-reader the book streams' connections are the frame readers' own.
	poolCfg := cfg
	if cfg.frameReader {
		poolCfg.bookStreams, poolCfg.bookTarget = 0, ""
	}
	bookClients, eventClients, all, err := dialPools(ctx, poolCfg, logger)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, c := range all {
			c.Close()
		}
	}()
	m := &measurement{cfg: cfg}
	// ListInstruments (for --spread) is served on --target only.
	var lister *mbostream.Client
	if len(eventClients) > 0 {
		lister = eventClients[0]
	} else if cfg.bookTarget == "" {
		lister = bookClients[0]
	}
	if lister == nil && cfg.spread {
		lister, err = dial(ctx, cfg.target, cfg, logger)
		if err != nil {
			return nil, err
		}
		defer lister.Close()
	}
	selections, err := bookSelections(ctx, cfg, lister)
	if err != nil {
		return nil, err
	}
	for _, s := range selections {
		if len(s) == 1 {
			m.instruments = append(m.instruments, s[0].String())
		}
	}

	cpu0 := cpuSeconds()
	start := time.Now()
	m.window = window{
		opens:  start.Add(cfg.warmup).UnixNano(),
		closes: start.Add(cfg.warmup + cfg.seconds).UnixNano(),
	}
	var wg sync.WaitGroup
	ended := make(chan struct{}, total)
	for range cfg.bookStreams {
		m.book = append(m.book, &bookCounters{lat: newLatencies(m.window), held: newHeldAges()})
	}
	if cfg.frameReader {
		target := cmp.Or(cfg.bookTarget, cfg.target)
		conns := connectionsFor(cfg, len(m.book))
		for j := range conns {
			var counters []*bookCounters
			var selected [][]mbostream.Instrument
			for i := j; i < len(m.book); i += conns {
				counters, selected = append(counters, m.book[i]), append(selected, selections[i])
			}
			wg.Go(func() {
				readBooksByFrames(ctx, target, cfg, selected, counters, m.window)
				for range counters {
					ended <- struct{}{}
				}
			})
		}
	} else {
		for i, c := range m.book {
			wg.Go(func() {
				readBooks(ctx, bookClients[i%len(bookClients)], cfg, selections[i], m.window, c)
				ended <- struct{}{}
			})
		}
	}
	for i := range cfg.eventsStreams {
		c := &eventCounters{lat: newLatencies(m.window)}
		m.events = append(m.events, c)
		wg.Go(func() {
			readEvents(ctx, eventClients[(cfg.bookStreams+i)%len(eventClients)], m.window, c)
			ended <- struct{}{}
		})
	}
	time.Sleep(time.Until(time.Unix(0, m.window.closes)))
	m.cpuSeconds = cpuSeconds() - cpu0
	m.wallSeconds = time.Since(start).Seconds()
	m.endedEarly = len(ended)
	cancel()
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		return nil, errors.New("streams did not stop within 30 s of the window's end")
	}
	return m, nil
}

// bookSelections is what each book stream watches: every book, or with --spread one instrument
// each, round-robin over the instruments the server lists.
func bookSelections(ctx context.Context, cfg config, client *mbostream.Client) ([][]mbostream.Instrument, error) {
	selections := make([][]mbostream.Instrument, cfg.bookStreams)
	if !cfg.spread || cfg.bookStreams == 0 {
		return selections, nil
	}
	infos, err := client.ListInstruments(ctx)
	if err != nil {
		return nil, err
	}
	if len(infos) == 0 {
		return nil, errors.New("--spread: the server lists no instrument yet")
	}
	for i := range selections {
		info := infos[i%len(infos)]
		selections[i] = []mbostream.Instrument{mbostream.ID(info.GetInstrumentId()).OnPublisher(info.GetPublisherId())}
	}
	return selections, nil
}

// bookRequest is what every book stream of the run asks for, whichever reader reads it.
func bookRequest(cfg config, instruments []mbostream.Instrument) mbostream.BookStreamRequest {
	return mbostream.BookStreamRequest{
		Instruments:         instruments,
		Depth:               uint32(cfg.depth),
		MaxUpdatesPerSecond: cfg.maxUpdatesPerSecond,
		CombineBooks:        cfg.combine,
		ReuseUpdates:        !cfg.newUpdates, // nothing here outlives the loop's turn
	}
}

func readBooks(ctx context.Context, client *mbostream.Client, cfg config, instruments []mbostream.Instrument, w window, c *bookCounters) {
	s := client.StreamBook(ctx, bookRequest(cfg, instruments))
	for s.Next() {
		u := s.Update()
		c.observe(w, time.Now().UnixNano(), u.Books, u.Snapshot, u.TsOut, u.Conflated)
	}
	c.held.finish(w)
	c.reconnects = s.Stats().Connections - 1
	c.err = streamError(s.Err())
}

// observe counts one book message received at now: its books as held (snapshots too: they are
// what the client holds first), and, inside the window and past the snapshots, its latency.
func (c *bookCounters) observe(w window, now int64, books []*v1.BookSnapshot, snapshot bool, tsOut, conflated uint64) {
	for _, b := range books {
		c.held.observe(w, bookKey{b.GetInstrumentId(), b.GetPublisherId()}, now, int64(tsOut))
	}
	if snapshot || !w.contains(now) {
		return
	}
	c.messages++
	c.books += uint64(len(books))
	for _, b := range books {
		c.deepest = max(c.deepest, len(b.GetBids()), len(b.GetAsks()))
	}
	c.conflated += conflated
	c.lat.record(w, now, tsOut)
}

func readEvents(ctx context.Context, client *mbostream.Client, w window, c *eventCounters) {
	s := client.StreamEvents(ctx, mbostream.EventsRequest{})
	var last uint64
	known := false
	for s.Next() {
		now := time.Now().UnixNano()
		b := s.Batch()
		if b.NewSnapshot {
			known = false // the stream started over (and says why in its stats)
		}
		if b.Snapshot {
			continue
		}
		// The tool's own check, independent of the library's: live positions follow each other.
		for _, seq := range b.ReplaySequence {
			switch {
			case !known || seq == last+1:
			case seq > last+1:
				c.gaps++
				c.recordsMissed += seq - last - 1
			default:
				c.duplicates++
			}
			last, known = seq, true
		}
		if w.contains(now) {
			c.records += uint64(b.Len())
			c.batches++
			c.lat.record(w, now, b.TsOut)
		}
	}
	st := s.Stats()
	c.gaps += st.Gaps
	c.duplicates += st.Duplicates
	c.resourceExhausted = st.SlowConsumerCutoffs
	c.outOfRange = st.OutOfRange
	c.epochChanges = st.EpochChanges
	c.err = streamError(s.Err())
}

// streamError is nil for a stream ended by the run's own cancellation.
func streamError(err error) error {
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// cpuSeconds is the user + system CPU time of this process so far.
func cpuSeconds() float64 {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		panic(fmt.Sprintf("getrusage: %v", err))
	}
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano()).Seconds()
}
