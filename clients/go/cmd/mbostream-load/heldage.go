package main

// Held-book age: issue 13's "book age", the time by which the book a client holds trails the live
// book, at every moment of the window (not only when a message arrives, as publish→receive is).

import (
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// heldAgeStep is how often, in wall time, each held book's age is sampled.
const heldAgeStep = int64(time.Millisecond)

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

// finish samples every book still held from its arrival to the window's close.
func (h *heldAges) finish(w window) {
	for _, b := range h.held {
		h.sample(w, b.received, w.closes, b.published)
	}
}

// sample records, at each step of the window's grid in [from, to), the age of a state the server
// took at taken.
func (h *heldAges) sample(w window, from, to, taken int64) {
	start, end := max(from, w.opens), min(to, w.closes)
	for t := w.opens + (start-w.opens+heldAgeStep-1)/heldAgeStep*heldAgeStep; t < end; t += heldAgeStep {
		age := max(t-taken, 0)
		recordNs(h.hist, age)
		h.max = max(h.max, age)
	}
}

func (h *heldAges) merge(other *heldAges) {
	h.hist.Merge(other.hist)
	h.max = max(h.max, other.max)
}
