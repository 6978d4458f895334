package main

// Report room: the result document (JSON) and its readable summary.

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

type result struct {
	Config            configDoc `json:"config"`
	Book              bookDoc   `json:"book"`
	Events            eventsDoc `json:"events"`
	StreamsEndedEarly int       `json:"streams_ended_early"`
	ClientCPUPercent  float64   `json:"client_cpu_percent"`
}

type configDoc struct {
	Target              string   `json:"target"`
	BookTarget          string   `json:"book_target,omitempty"`
	BookStreams         int      `json:"book_streams"`
	EventsStreams       int      `json:"events_streams"`
	Combine             bool     `json:"combine"`
	NewUpdates          bool     `json:"new_updates"`
	Spread              bool     `json:"spread"`
	Depth               int      `json:"depth"`
	MaxUpdatesPerSecond float64  `json:"max_updates_per_second"`
	Connections         int      `json:"connections"`
	TLS                 bool     `json:"tls"`
	Seconds             float64  `json:"seconds"`
	Warmup              float64  `json:"warmup"`
	SpreadInstruments   []string `json:"spread_instruments,omitempty"`
	// BookWindows: the book connections' receive windows (stream, connection), when set.
	BookWindows *[2]int32 `json:"book_windows,omitempty"`
	// FrameReader: the book streams were read by the tool's own frame reader, not by gRPC-Go.
	FrameReader bool `json:"frame_reader"`
}

type bookDoc struct {
	Streams           int     `json:"streams"`
	Messages          uint64  `json:"messages"`
	MessagesPerSecond float64 `json:"messages_per_second"`
	// Books counts the books those messages carried (several a message with --combine).
	Books uint64 `json:"books"`
	// DeepestSide is the most levels one side of a received book had (at most --depth).
	DeepestSide       int       `json:"deepest_side"`
	Conflated         uint64    `json:"conflated"`
	Samples           int64     `json:"samples"`
	P50Ms             *float64  `json:"p50_ms"`
	P99Ms             *float64  `json:"p99_ms"`
	P999Ms            *float64  `json:"p999_ms"`
	MaxMs             *float64  `json:"max_ms"`
	WorstMsEachSecond []float64 `json:"worst_ms_each_second"`
	// HeldAge* is the age of the book each stream holds against the live book, sampled every
	// millisecond of the window for every book it holds (heldAges: an upper bound, tight when
	// books change at every replay step).
	HeldAgeSamples int64    `json:"held_age_samples"`
	HeldAgeP50Ms   *float64 `json:"held_age_p50_ms"`
	HeldAgeP99Ms   *float64 `json:"held_age_p99_ms"`
	HeldAgeMaxMs   *float64 `json:"held_age_max_ms"`
	Reconnects     int      `json:"reconnects"`
	// Unserved counts the streams that received no message in the window (refused by the
	// server's stream limits and retrying, say): their latency is in no figure above.
	Unserved int            `json:"unserved"`
	Errors   map[string]int `json:"errors"`
}

type eventsDoc struct {
	Streams           int      `json:"streams"`
	Records           uint64   `json:"records"`
	RecordsPerSecond  float64  `json:"records_per_second"`
	Batches           uint64   `json:"batches"`
	Lossless          bool     `json:"lossless"`
	Gaps              int      `json:"gaps"`
	Duplicates        int      `json:"duplicates"`
	RecordsMissed     uint64   `json:"records_missed"`
	ResourceExhausted int      `json:"resource_exhausted"`
	OutOfRange        int      `json:"out_of_range"`
	EpochChanges      int      `json:"epoch_changes"`
	BatchP50Ms        *float64 `json:"batch_p50_ms"`
	BatchP99Ms        *float64 `json:"batch_p99_ms"`
	BatchMaxMs        *float64 `json:"batch_max_ms"`
	// Unserved counts the streams that received no record in the window.
	Unserved int            `json:"unserved"`
	Errors   map[string]int `json:"errors"`
}

func summarise(m *measurement) result {
	seconds := m.cfg.seconds.Seconds()
	r := result{
		Config: configDoc{
			Target: m.cfg.target, BookTarget: m.cfg.bookTarget, BookStreams: m.cfg.bookStreams, EventsStreams: m.cfg.eventsStreams,
			Combine: m.cfg.combine, NewUpdates: m.cfg.newUpdates, Spread: m.cfg.spread, Depth: m.cfg.depth,
			MaxUpdatesPerSecond: m.cfg.maxUpdatesPerSecond, Connections: m.cfg.connections, TLS: m.cfg.tls != nil,
			Seconds: seconds, Warmup: m.cfg.warmup.Seconds(), SpreadInstruments: m.instruments,
			FrameReader: m.cfg.frameReader,
		},
		StreamsEndedEarly: m.endedEarly,
		ClientCPUPercent:  round(100*m.cpuSeconds/m.wallSeconds, 1),
	}
	if m.cfg.bookWindows != [2]int32{} {
		r.Config.BookWindows = &m.cfg.bookWindows
	}

	bookLat, held := newLatencies(m.window), newHeldAges()
	r.Book = bookDoc{Streams: len(m.book), Errors: map[string]int{}}
	for _, c := range m.book {
		bookLat.merge(c.lat)
		held.merge(c.held)
		r.Book.Messages += c.messages
		r.Book.Books += c.books
		r.Book.DeepestSide = max(r.Book.DeepestSide, c.deepest)
		r.Book.Conflated += c.conflated
		r.Book.Reconnects += c.reconnects
		if c.messages == 0 {
			r.Book.Unserved++
		}
		countError(r.Book.Errors, c.err)
	}
	r.Book.MessagesPerSecond = round(float64(r.Book.Messages)/seconds, 1)
	r.Book.Samples = bookLat.hist.TotalCount()
	if r.Book.Samples > 0 {
		r.Book.P50Ms, r.Book.P99Ms, r.Book.P999Ms = quantileMs(bookLat, 50), quantileMs(bookLat, 99), quantileMs(bookLat, 99.9)
		r.Book.MaxMs = ms(bookLat.max)
		for _, worst := range bookLat.worst {
			r.Book.WorstMsEachSecond = append(r.Book.WorstMsEachSecond, round(float64(worst)/1e6, 2))
		}
	}
	r.Book.HeldAgeSamples = held.hist.TotalCount()
	if r.Book.HeldAgeSamples > 0 {
		r.Book.HeldAgeP50Ms, r.Book.HeldAgeP99Ms = histQuantileMs(held.hist, held.max, 50), histQuantileMs(held.hist, held.max, 99)
		r.Book.HeldAgeMaxMs = ms(held.max)
	}

	eventLat := newLatencies(m.window)
	r.Events = eventsDoc{Streams: len(m.events), Errors: map[string]int{}}
	for _, c := range m.events {
		eventLat.merge(c.lat)
		r.Events.Records += c.records
		r.Events.Batches += c.batches
		r.Events.Gaps += c.gaps
		r.Events.Duplicates += c.duplicates
		r.Events.RecordsMissed += c.recordsMissed
		r.Events.ResourceExhausted += c.resourceExhausted
		r.Events.OutOfRange += c.outOfRange
		r.Events.EpochChanges += c.epochChanges
		if c.records == 0 {
			r.Events.Unserved++
		}
		countError(r.Events.Errors, c.err)
	}
	r.Events.RecordsPerSecond = round(float64(r.Events.Records)/seconds, 1)
	// Lossless needs evidence: records delivered, and none of the ways of losing one.
	r.Events.Lossless = r.Events.Records > 0 && r.Events.Gaps == 0 && r.Events.Duplicates == 0 &&
		r.Events.ResourceExhausted == 0 && r.Events.OutOfRange == 0 && r.Events.EpochChanges == 0 && len(r.Events.Errors) == 0
	if eventLat.hist.TotalCount() > 0 {
		r.Events.BatchP50Ms, r.Events.BatchP99Ms = quantileMs(eventLat, 50), quantileMs(eventLat, 99)
		r.Events.BatchMaxMs = ms(eventLat.max)
	}
	return r
}

func countError(errs map[string]int, err error) {
	if err != nil {
		errs[err.Error()]++
	}
}

// quantileMs is the histogram's value at quantile q (0–100), in ms: the highest value of its
// bucket, but never above the exact maximum.
func quantileMs(l *latencies, q float64) *float64 {
	return histQuantileMs(l.hist, l.max, q)
}

// histQuantileMs is quantileMs of a histogram in µs whose exact maximum is maxNs.
func histQuantileMs(h *hdrhistogram.Histogram, maxNs int64, q float64) *float64 {
	return ms(min(h.ValueAtQuantile(q)*int64(time.Microsecond), maxNs))
}

func ms(ns int64) *float64 {
	v := round(float64(ns)/1e6, 3)
	return &v
}

func round(v float64, decimals int) float64 {
	scale := math.Pow(10, float64(decimals))
	return math.Round(v*scale) / scale
}

func writeJSON(w io.Writer, r result) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// formatSummary is a few readable lines of a result.
func formatSummary(r result) string {
	var b strings.Builder
	target := r.Config.Target
	var about []string
	if r.Config.BookTarget != "" {
		about = append(about, "book streams: "+r.Config.BookTarget)
	}
	if w := r.Config.BookWindows; w != nil {
		about = append(about, fmt.Sprintf("receive windows %d B a stream, %d B the connection", w[0], w[1]))
	}
	if len(about) > 0 {
		target += " (" + strings.Join(about, ", ") + ")"
	}
	reader := ""
	if r.Config.FrameReader {
		reader = ", book streams read by the frame reader"
	}
	fmt.Fprintf(&b, "target %s: %g s measured after %g s warm-up, %s%s\n", target, r.Config.Seconds, r.Config.Warmup,
		connectionsText(r.Config), reader)
	if r.Book.Streams > 0 {
		fmt.Fprintf(&b, "StreamBook   x%-4d %12.0f msg/s   publish→receive p50 %s ms  p99 %s ms  p99.9 %s ms  max %s ms  (conflated %d, reconnects %d)\n",
			r.Book.Streams, r.Book.MessagesPerSecond, text(r.Book.P50Ms), text(r.Book.P99Ms), text(r.Book.P999Ms),
			text(r.Book.MaxMs), r.Book.Conflated, r.Book.Reconnects)
		fmt.Fprintf(&b, "             worst latency in each second (ms): %v\n", r.Book.WorstMsEachSecond)
		fmt.Fprintf(&b, "             held book age p50 %s ms  p99 %s ms  max %s ms  (every held book, every ms of the window)\n",
			text(r.Book.HeldAgeP50Ms), text(r.Book.HeldAgeP99Ms), text(r.Book.HeldAgeMaxMs))
	}
	if r.Events.Streams > 0 {
		verdict := "lossless"
		if !r.Events.Lossless {
			verdict = "LOSSY"
		}
		fmt.Fprintf(&b, "StreamEvents x%-4d %12.0f records/s  batch latency p50 %s ms  p99 %s ms   %s (gaps %d, duplicates %d, resource_exhausted %d, out_of_range %d, epoch changes %d)\n",
			r.Events.Streams, r.Events.RecordsPerSecond, text(r.Events.BatchP50Ms), text(r.Events.BatchP99Ms), verdict,
			r.Events.Gaps, r.Events.Duplicates, r.Events.ResourceExhausted, r.Events.OutOfRange, r.Events.EpochChanges)
	}
	if unserved := r.Book.Unserved + r.Events.Unserved; unserved > 0 {
		fmt.Fprintf(&b, "UNSERVED: %d book and %d events streams got nothing in the window (the server's stream limits?)\n",
			r.Book.Unserved, r.Events.Unserved)
	}
	if errs := mergedErrors(r); len(errs) > 0 || r.StreamsEndedEarly > 0 {
		fmt.Fprintf(&b, "errors: %s  streams ended early: %d\n", strings.Join(errs, "; "), r.StreamsEndedEarly)
	}
	fmt.Fprintf(&b, "client CPU %g%% of one core\n", r.ClientCPUPercent)
	return b.String()
}

func connectionsText(c configDoc) string {
	if c.Connections == 0 {
		return "one connection per stream"
	}
	return fmt.Sprintf("%d connections", c.Connections)
}

func mergedErrors(r result) []string {
	var out []string
	for _, errs := range []map[string]int{r.Book.Errors, r.Events.Errors} {
		for msg, n := range errs {
			out = append(out, fmt.Sprintf("%d× %s", n, msg))
		}
	}
	sort.Strings(out)
	return out
}

func text(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%g", *v)
}
