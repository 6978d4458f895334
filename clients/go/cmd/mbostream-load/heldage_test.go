package main

import (
	"math/rand/v2"
	"testing"
	"time"
)

const msec = int64(time.Millisecond)

// agesMs returns the held-age samples of h to the nearest ms (the middle of each histogram
// bucket: buckets are a few tens of µs wide at these ages), in the order of their values.
func agesMs(h *heldAges) []int64 {
	var out []int64
	for _, bar := range h.hist.Distribution() {
		for range bar.Count {
			out = append(out, (bar.From+bar.To+1000)/2000)
		}
	}
	return out
}

// TestTheHeldBookAgesFromWhenItWasTaken: a book taken at 9 ms arrives at 10 ms and is held until
// the next one (taken at 25 ms) arrives at 30 ms, which is held to the window's close: every
// millisecond from the first arrival is one sample, the age of the state held then.
func TestTheHeldBookAgesFromWhenItWasTaken(t *testing.T) {
	w := window{opens: 0, closes: 100 * msec}
	h := newHeldAges()
	key := bookKey{instrument: 1, publisher: 1}
	h.observe(w, key, 10*msec, 9*msec)
	h.observe(w, key, 30*msec, 25*msec)
	h.finish(w)
	got := agesMs(h)
	want := []int64{}
	for t := int64(10); t < 30; t++ {
		want = append(want, t-9) // 1..20
	}
	for t := int64(30); t < 100; t++ {
		want = append(want, t-25) // 5..74
	}
	if len(got) != len(want) || h.max != 74*msec {
		t.Fatalf("%d samples (want %d), max %d ms (want 74)", len(got), len(want), h.max/msec)
	}
	counts := map[int64]int{}
	for _, v := range want {
		counts[v]++
	}
	for _, v := range got {
		counts[v]--
	}
	for v, n := range counts {
		if n != 0 {
			t.Fatalf("age %d ms: %d samples too few (negative: too many)", v, n)
		}
	}
}

// TestOnlyTheWindowIsSampledAndEachBookOnItsOwn: states held before the window count from its
// opening; two books are two samples a millisecond; nothing after the close is sampled.
func TestOnlyTheWindowIsSampledAndEachBookOnItsOwn(t *testing.T) {
	w := window{opens: 100 * msec, closes: 110 * msec}
	h := newHeldAges()
	h.observe(w, bookKey{1, 1}, 50*msec, 50*msec)
	h.observe(w, bookKey{2, 1}, 99*msec, 98*msec)
	h.observe(w, bookKey{1, 1}, 105*msec, 104*msec)
	h.observe(w, bookKey{2, 1}, 200*msec, 199*msec) // after the close
	h.finish(w)
	got := agesMs(h)
	if len(got) != 20 {
		t.Fatalf("%d samples, want 20 (two books, 100..109 ms)", len(got))
	}
	// Book 1 is held from 50 ms (taken then) until 105 ms: 50..54 ms old at 100..104 ms.
	// Book 2 is 2..11 ms old from 100 to 109 ms; the max is 54 ms.
	if h.max != 54*msec {
		t.Fatalf("max %d ms, want 54", h.max/msec)
	}
}

// TestBinnedHeldAgesMatchSampleBySample: held states of random lengths, ages from below zero
// (clamped) to past the binned range (1 s), recorded as runs, against the same samples recorded
// one by one: the same count and max, and every quantile within the bins' half width (50 µs)
// plus the histogram's own precision.
func TestBinnedHeldAgesMatchSampleBySample(t *testing.T) {
	w := window{opens: 0, closes: 3000 * msec}
	rng := rand.New(rand.NewPCG(1, 2))
	h := newHeldAges()
	want, wantMax := newHistogram(), int64(0)
	at := int64(0)
	for at < w.closes {
		until := at + rng.Int64N(1500*msec)
		taken := at - rng.Int64N(1200*msec) + 3*msec // from 3 ms after arrival (below zero) to 1.2 s before
		h.sample(w, at, until, taken)
		for g := (at + msec - 1) / msec * msec; g < min(until, w.closes); g += msec {
			age := max(g-taken, 0)
			recordNs(want, age)
			wantMax = max(wantMax, age)
		}
		at = until
	}
	h.finish(w)
	if h.hist.TotalCount() != want.TotalCount() || h.max != wantMax {
		t.Fatalf("%d samples, max %d ns; one by one %d, max %d ns", h.hist.TotalCount(), h.max, want.TotalCount(), wantMax)
	}
	for _, q := range []float64{0.1, 1, 10, 25, 50, 75, 90, 99, 99.9, 100} {
		got, exp := h.hist.ValueAtQuantile(q), want.ValueAtQuantile(q)
		if tolerance := 50 + exp/500 + 1; got < exp-tolerance || got > exp+tolerance {
			t.Errorf("p%g: %d µs binned, %d µs one by one", q, got, exp)
		}
	}
}
