package main

// Held-book age: issue 13's "book age", the time by which the book a client holds trails the live
// book, at every moment of the window (not only when a message arrives, as publish→receive is).

import (
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// heldAgeStep is how often, in wall time, each held book's age is sampled.
const heldAgeStep = int64(time.Millisecond)

// Samples younger than heldAgeBins*heldAgeBin are counted in bins of heldAgeBin (their histogram
// gets each bin's middle), so that a state held for n steps costs O(1), not n histogram updates:
// the ages it is sampled at are a, a+step, a+2*step, ..., so their bins are b, b+stride,
// b+2*stride, ..., a run one difference array per residue of stride counts with two updates.
// With 1,000 streams the per-sample histogram took a tenth of the load tool's CPU. Older samples
// (rare) go to the histogram one by one.
const (
	heldAgeBin    = 100 * int64(time.Microsecond)
	heldAgeBins   = 10_000 // 1 s
	heldAgeStride = heldAgeStep / heldAgeBin
)

// bookKey names one book: the server keeps books per (instrument, publisher).
type bookKey struct{ instrument, publisher uint32 }

// heldBook is the state a stream holds of one book: when it arrived and when the server published it.
type heldBook struct{ received, published int64 }

// heldAges is one StreamBook stream's held-book ages, in microseconds.
//
// Between two messages for a book, the client holds the first: a state the server took at the
// message's ts_out. The server takes books at its refresh ticks, not at every change, so when the
// live book moved on from that state is not in the stream (a message's conflated count counts
// skipped refreshes, not changes). The live book is taken to move on right after each state was
// taken, so the age at a moment t is t minus the held state's ts_out: an upper bound, tight when
// the books change at every replay step (a few ms apart at the rates of the benchmarks).
type heldAges struct {
	hist *hdrhistogram.Histogram
	max  int64
	held map[bookKey]heldBook
	// runs is the difference array of the binned samples not yet in hist (nil until the first):
	// bin i's count is the sum of runs[i], runs[i-stride], runs[i-2*stride], ...
	runs []int32
}

func newHeldAges() *heldAges {
	return &heldAges{hist: newHistogram(), held: map[bookKey]heldBook{}}
}

// observe takes one message carrying book key's state, taken by the server at published and
// received at now.
func (h *heldAges) observe(w window, key bookKey, now, published int64) {
	if prev, ok := h.held[key]; ok {
		h.sample(w, prev.received, now, prev.published)
	}
	h.held[key] = heldBook{received: now, published: published}
}

// finish samples every book still held from its arrival to the window's close, and moves the
// binned samples into the histogram.
func (h *heldAges) finish(w window) {
	for _, b := range h.held {
		h.sample(w, b.received, w.closes, b.published)
	}
	if h.runs == nil {
		return
	}
	for i := range heldAgeBins {
		if i >= int(heldAgeStride) {
			h.runs[i] += h.runs[i-int(heldAgeStride)]
		}
		if h.runs[i] > 0 {
			_ = h.hist.RecordValues((int64(i)*heldAgeBin+heldAgeBin/2)/int64(time.Microsecond), int64(h.runs[i]))
		}
	}
	h.runs = nil
}

// sample records, at each step of the window's grid in [from, to), the age of a state the server
// took at taken.
func (h *heldAges) sample(w window, from, to, taken int64) {
	start, end := max(from, w.opens), min(to, w.closes)
	t := w.opens + (start-w.opens+heldAgeStep-1)/heldAgeStep*heldAgeStep
	if t >= end {
		return
	}
	n := (end - t + heldAgeStep - 1) / heldAgeStep // grid points t, t+step, ... before end
	h.max = max(h.max, t+(n-1)*heldAgeStep-taken)
	// Ages below zero (a state stamped after it was received: rounding) count as zero.
	if age := t - taken; age < 0 {
		zeros := min(n, (-age+heldAgeStep-1)/heldAgeStep)
		_ = h.hist.RecordValues(histogramLowest, zeros) // as recordNs clamps them
		t, n = t+zeros*heldAgeStep, n-zeros
	}
	age := t - taken
	if binned := min(n, max(0, (heldAgeBins*heldAgeBin-age+heldAgeStep-1)/heldAgeStep)); binned > 0 {
		if h.runs == nil {
			h.runs = make([]int32, heldAgeBins+heldAgeStride)
		}
		first := age / heldAgeBin
		h.runs[first]++
		h.runs[first+binned*heldAgeStride]--
		age, n = age+binned*heldAgeStep, n-binned
	}
	for ; n > 0; n-- {
		recordNs(h.hist, age)
		age += heldAgeStep
	}
}

func (h *heldAges) merge(other *heldAges) {
	h.hist.Merge(other.hist)
	h.max = max(h.max, other.max)
}
