package mbostream_test

// BookStreamRequest.ReuseUpdates: every message decoded into the same memory must read exactly as
// the same message decoded into new memory, whatever the message before it held (more or fewer
// books, levels and orders, a Bbo or a trade or none, a map, zero fields), and a stream without it
// must hand out updates that nothing overwrites.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	v1 "github.com/mbostream/mbostream/clients/go/gen/mbostream/v1"
	"github.com/mbostream/mbostream/clients/go/mbostream"
)

// randomBookMessage is a StreamBookResponse of a random shape: one book or several (or none), 0 to
// 12 levels a side with 0 to 4 orders each, each optional part present or not, every number
// possibly zero (so absent on the wire, where a decode over older contents could keep the old).
func randomBookMessage(rng *rand.Rand) *v1.StreamBookResponse {
	maybe := func(v uint64) uint64 { return v * uint64(rng.IntN(2)) }
	levels := func() []*v1.Level {
		var out []*v1.Level
		for range rng.IntN(13) {
			l := &v1.Level{Price: int64(maybe(6_650_000_000_000 + rng.Uint64N(1_000_000_000))), Size: maybe(1 + rng.Uint64N(99)), Count: uint32(maybe(1 + rng.Uint64N(9)))}
			for range rng.IntN(5) {
				l.Orders = append(l.Orders, &v1.Order{OrderId: maybe(1 + rng.Uint64N(1<<40)), Size: uint32(maybe(1 + rng.Uint64N(9)))})
			}
			out = append(out, l)
		}
		return out
	}
	book := func() *v1.BookSnapshot {
		b := &v1.BookSnapshot{
			InstrumentId: uint32(maybe(5000 + rng.Uint64N(4))), PublisherId: uint32(maybe(1)),
			Bids: levels(), Asks: levels(), BidLevelCount: uint32(maybe(rng.Uint64N(200))), AskLevelCount: uint32(maybe(rng.Uint64N(200))),
			Volume: maybe(rng.Uint64N(1 << 20)), TradeCount: maybe(rng.Uint64N(1 << 12)), Sequence: uint32(maybe(rng.Uint64N(1 << 30))),
			ReplaySequence: maybe(rng.Uint64N(1 << 30)), TsEvent: maybe(1 << 60), TsRecv: maybe(1<<60 + 1), Crossed: rng.IntN(2) == 0,
			Locked: rng.IntN(2) == 0, CrossedSinceTs: maybe(1 << 59),
		}
		if rng.IntN(2) == 0 {
			b.Symbol = []string{"ESZ6", "CLX5", "NQH7"}[rng.IntN(3)]
		}
		if rng.IntN(3) > 0 {
			b.Bbo = &v1.Bbo{HasBid: rng.IntN(2) == 0, BidPrice: int64(maybe(6_650_000_000_000)), BidSize: maybe(7), BidCount: uint32(maybe(2)), HasAsk: rng.IntN(2) == 0, AskPrice: int64(maybe(6_650_250_000_000)), AskSize: maybe(3), AskCount: uint32(maybe(1))}
		}
		if rng.IntN(3) > 0 {
			b.LastTrade = &v1.Trade{Price: int64(maybe(6_650_000_000_000)), Size: uint32(maybe(5)), Side: v1.Side(rng.IntN(3)), TsEvent: maybe(1 << 60)}
		}
		if rng.IntN(4) == 0 {
			b.AnomalyCounts = map[string]uint64{"order_not_found": maybe(3), "crossed_book": 1}
		}
		return b
	}
	m := &v1.StreamBookResponse{IsSnapshot: rng.IntN(4) == 0, TsOut: maybe(1<<60 + 2), Conflated: maybe(rng.Uint64N(9))}
	if rng.IntN(2) == 0 {
		m.Epoch = "5f0c3a9e7d21b846"
	}
	if rng.IntN(2) == 0 {
		m.Book = book()
	} else {
		for range rng.IntN(5) {
			m.Books = append(m.Books, book())
		}
	}
	return m
}

// TestCodecDecodesAgainIntoTheSameMessage: 2,000 random messages decoded one after another into one
// message, as a stream with ReuseUpdates does, each equal to the message sent.
func TestCodecDecodesAgainIntoTheSameMessage(t *testing.T) {
	codec := mbostream.Codec()
	rng := rand.New(rand.NewPCG(7, 8))
	reused := &v1.StreamBookResponse{}
	sameLevels := 0
	for i := range 2000 {
		want := randomBookMessage(rng)
		data, err := proto.Marshal(want)
		if err != nil {
			t.Fatal(err)
		}
		var before *v1.Level
		if books := reused.GetBooks(); len(books) > 0 && len(books[0].GetBids()) > 0 {
			before = books[0].GetBids()[0]
		}
		if err := codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(data)}, mbostream.DecodedAgain(reused)); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if !proto.Equal(reused, want) {
			t.Fatalf("message %d decoded over the one before:\n%v\nwant\n%v", i, reused, want)
		}
		if books := reused.GetBooks(); before != nil && len(books) > 0 && len(books[0].GetBids()) > 0 && books[0].GetBids()[0] == before {
			sameLevels++
		}
	}
	if sameLevels < 100 {
		t.Fatalf("%d decodes filled the level the message before had: not decoded into the same memory", sameLevels)
	}
}

// TestCodecLeavesWhatACallerKeptAlone: without ReuseUpdates, a message decoded into again (by a
// caller's own RecvMsg) is Reset, never emptied in place: what the caller kept of it stays as it was.
func TestCodecLeavesWhatACallerKeptAlone(t *testing.T) {
	codec := mbostream.Codec()
	rng := rand.New(rand.NewPCG(9, 10))
	m := &v1.StreamBookResponse{}
	for range 50 {
		first := randomBookMessage(rng)
		first.Book = &v1.BookSnapshot{Bids: []*v1.Level{{Price: 1, Size: 2}}, Bbo: &v1.Bbo{BidPrice: 1}}
		data, _ := proto.Marshal(first)
		if err := codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(data)}, m); err != nil {
			t.Fatal(err)
		}
		kept, keptBbo, keptLevel := m.GetBook(), m.GetBook().GetBbo(), m.GetBook().GetBids()[0]
		keptCopy := proto.CloneOf(kept)
		next, _ := proto.Marshal(randomBookMessage(rng))
		if err := codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(next)}, m); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(kept, keptCopy) || keptBbo.GetBidPrice() != 1 || keptLevel.GetSize() != 2 {
			t.Fatalf("the next decode changed what the caller kept: %v, want %v", kept, keptCopy)
		}
	}
}

// bookScript is a MarketDataService whose StreamBook sends these messages, then holds the call.
type bookScript struct {
	v1.UnimplementedMarketDataServiceServer
	messages []*v1.StreamBookResponse
}

func (s *bookScript) StreamBook(_ *v1.StreamBookRequest, stream grpc.ServerStreamingServer[v1.StreamBookResponse]) error {
	for _, m := range s.messages {
		if err := stream.Send(m); err != nil {
			return err
		}
	}
	<-stream.Context().Done()
	return stream.Context().Err()
}

// TestBookStreamReuseUpdates: the same 300 messages read at once by two streams with ReuseUpdates
// (each update copied as it comes) and by one without (each update kept as handed out) read the
// same; a reusing stream hands out one BookUpdate, overwritten each time, the other a new one each
// time, never overwritten.
func TestBookStreamReuseUpdates(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	script := &bookScript{}
	for range 300 {
		script.messages = append(script.messages, randomBookMessage(rng))
	}
	client := dial(t, serveMarketData(t, script))
	type read struct{ copies, kept []*mbostream.BookUpdate }
	readAll := func(reuse bool, into *read) error {
		ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
		defer cancel()
		s := client.StreamBook(ctx, mbostream.BookStreamRequest{ReuseUpdates: reuse, NoReconnect: true})
		defer s.Close()
		for len(into.kept) < len(script.messages) && s.Next() {
			u := s.Update()
			c := *u
			c.Books = nil
			for _, b := range u.Books {
				c.Books = append(c.Books, proto.CloneOf(b))
			}
			into.copies, into.kept = append(into.copies, &c), append(into.kept, u)
		}
		if len(into.kept) != len(script.messages) {
			return fmt.Errorf("ReuseUpdates %v: %d updates, then %v", reuse, len(into.kept), s.Err())
		}
		return nil
	}
	// Three streams at once, two of them reusing: their books, BBOs and trades go through the same
	// generated pools (go test -race sees any sharing).
	var reused, reusedToo, fresh read
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for n, r := range []*read{&reused, &reusedToo, &fresh} {
		wg.Go(func() { errs[n] = readAll(r != &fresh, r) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	reusedCopies, reusedKept, newCopies, newKept := reused.copies, reused.kept, fresh.copies, fresh.kept
	for i := range script.messages {
		for j := range reusedCopies[i].Books {
			if !proto.Equal(reusedCopies[i].Books[j], reusedToo.copies[i].Books[j]) {
				t.Fatalf("message %d, book %d: the two reusing streams read it differently", i, j)
			}
		}
	}
	for i, m := range script.messages {
		want := append(append([]*v1.BookSnapshot{}, m.GetBooks()...), m.GetBook())
		if m.GetBook() == nil {
			want = want[:len(want)-1]
		}
		for name, got := range map[string]*mbostream.BookUpdate{"reused, copied": reusedCopies[i], "new, kept": newKept[i]} {
			if len(got.Books) != len(want) || got.TsOut != m.GetTsOut() || got.Conflated != m.GetConflated() || got.Epoch != m.GetEpoch() || got.Snapshot != m.GetIsSnapshot() {
				t.Fatalf("message %d, %s: %+v, want %v", i, name, got, m)
			}
			for j := range want {
				if !proto.Equal(got.Books[j], want[j]) {
					t.Fatalf("message %d, %s, book %d: %v, want %v", i, name, j, got.Books[j], want[j])
				}
			}
		}
		if i > 0 && (reusedKept[i] != reusedKept[0] || newKept[i] == newKept[i-1]) {
			t.Fatalf("message %d: ReuseUpdates handed out a new update, or a stream without it the same one again", i)
		}
		for j := range newKept[i].Books {
			if !proto.Equal(newKept[i].Books[j], newCopies[i].Books[j]) {
				t.Fatalf("message %d, book %d: an update handed out without ReuseUpdates changed after", i, j)
			}
		}
	}
}
