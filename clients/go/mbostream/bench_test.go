package mbostream_test

// The streams' hot paths, measured (`go test -run - -bench . ./mbostream/`): decoding a book
// message and an event batch, by protobuf-go's reflection, by the generated UnmarshalVT and by the
// client's codec; parsing one 4,096-record StreamEventsResponse and wrapping it as an EventBatch.

import (
	"math/rand/v2"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	v1 "github.com/mbostream/mbostream/clients/go/gen/mbostream/v1"
	"github.com/mbostream/mbostream/clients/go/mbostream"
)

// realisticBatch is a live batch shaped like the server's: consecutive positions, nanosecond
// timestamps, prices near 4,500.00 on a 0.25 tick, small sizes, mostly adds and cancels.
func realisticBatch(n int) []byte {
	rng := rand.New(rand.NewPCG(1, 2))
	m := &v1.StreamEventsResponse{BatchSequence: uint64(1_000_000 + n - 1), TsOut: 1_767_623_400_000_000_000, Epoch: "0123456789abcdef"}
	ts := uint64(1_767_623_400_000_000_000)
	actions := []byte("AACCCMTF")
	for i := range n {
		ts += uint64(rng.IntN(50_000))
		m.ReplaySequence = append(m.ReplaySequence, uint64(1_000_000+i))
		m.TsEvent = append(m.TsEvent, ts)
		m.TsRecv = append(m.TsRecv, ts+uint64(rng.IntN(20_000)))
		m.OrderId = append(m.OrderId, 6_000_000_000_000+uint64(rng.IntN(1_000_000)))
		m.Price = append(m.Price, 4_500_000_000_000+int64(rng.IntN(200)-100)*250_000_000)
		m.Size = append(m.Size, uint32(1+rng.IntN(20)))
		m.Action = append(m.Action, actions[rng.IntN(len(actions))])
		m.Side = append(m.Side, "BA"[rng.IntN(2)])
		m.Flags = append(m.Flags, byte(mbostream.FlagLast))
		m.Sequence = append(m.Sequence, uint32(90_000_000+i))
		m.InstrumentId = append(m.InstrumentId, uint32(5000+rng.IntN(4)))
		m.PublisherId = append(m.PublisherId, 1)
	}
	data, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	return data
}

func BenchmarkParseAndDecodeEvents(b *testing.B) {
	const records = 4096
	data := realisticBatch(records)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		m := &v1.StreamEventsResponse{}
		if err := proto.Unmarshal(data, m); err != nil {
			b.Fatal(err)
		}
		if _, err := mbostream.DecodeEvents(m); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(records*b.N)/b.Elapsed().Seconds(), "records/s")
}

// sampleBook is a depth-10 book shaped like the test sample's busiest (ESZ6 near 6,650.00 on a
// 0.25 tick, about 190 levels a side, 15 to 95 orders a level, small sizes; GetBook of the sample
// with orders), with the fields the server sets (server/native/wire/src/book.rs): no anomaly.
func sampleBook(withOrders bool) *v1.BookSnapshot {
	rng := rand.New(rand.NewPCG(3, 4))
	const (
		tick   = 250_000_000
		bestAt = 6_650_000_000_000
	)
	ts := uint64(1_767_623_401_612_863_722)
	book := &v1.BookSnapshot{
		InstrumentId: 5002, PublisherId: 1, Symbol: "ESZ6", BidLevelCount: 185, AskLevelCount: 184,
		LastTrade: &v1.Trade{Price: bestAt, Size: 7, Side: v1.Side_SIDE_ASK, TsEvent: ts},
		Volume:    10_250, TradeCount: 1_930, Sequence: 9_732_221, ReplaySequence: 148_681,
		TsEvent: ts, TsRecv: ts + 15_049,
	}
	nextOrder := uint64(6_223_274_254_162)
	side := func(best int64, step int64) []*v1.Level {
		levels := make([]*v1.Level, 10)
		for i := range levels {
			level := &v1.Level{Price: best + int64(i)*step, Count: uint32(15 + rng.IntN(81))}
			for range level.Count {
				size := uint32(1 + rng.IntN(10))
				level.Size += uint64(size)
				if withOrders {
					level.Orders = append(level.Orders, &v1.Order{OrderId: nextOrder, Size: size})
				}
				nextOrder += uint64(1 + rng.IntN(40))
			}
			levels[i] = level
		}
		return levels
	}
	book.Bids, book.Asks = side(bestAt, -tick), side(bestAt+tick, tick)
	bid, ask := book.Bids[0], book.Asks[0]
	book.Bbo = &v1.Bbo{
		HasBid: true, BidPrice: bid.Price, BidSize: bid.Size, BidCount: bid.Count,
		HasAsk: true, AskPrice: ask.Price, AskSize: ask.Size, AskCount: ask.Count,
	}
	return book
}

// sampleBookMessage is a StreamBookResponse as the server writes it: the book and ts_out shared by
// every client of the book, then the client's own fields (conflated, the 16-hex-digit epoch)
// appended (server/mbostream/server/market_data.py, book_message).
func sampleBookMessage(withOrders bool) []byte {
	shared, err := proto.Marshal(&v1.StreamBookResponse{Book: sampleBook(withOrders), TsOut: 1_767_623_401_613_102_417})
	if err != nil {
		panic(err)
	}
	own, err := proto.Marshal(&v1.StreamBookResponse{Conflated: 2, Epoch: "5f0c3a9e7d21b846"})
	if err != nil {
		panic(err)
	}
	return append(shared, own...)
}

// apiMessage is a message of the API: protobuf-go's, with the generated UnmarshalVT.
type apiMessage interface {
	proto.Message
	UnmarshalVT([]byte) error
}

// received is a message as gRPC hands it to the codec, whole and in frames, and as its bytes.
type received struct {
	data    []byte
	buffers mem.BufferSlice
	frames  mem.BufferSlice
}

// inFrames is data cut where HTTP/2's default 16 KiB frames would cut it.
func inFrames(data []byte) mem.BufferSlice {
	var frames mem.BufferSlice
	for len(data) > 0 {
		n := min(len(data), 16<<10)
		frames = append(frames, mem.SliceBuffer(data[:n]))
		data = data[n:]
	}
	return frames
}

// BenchmarkDecode decodes each message into a new one, as gRPC does for every message received.
func BenchmarkDecode(b *testing.B) {
	codec := mbostream.Codec()
	decoders := []struct {
		name   string
		decode func(in received, m apiMessage) error
	}{
		{"proto.Unmarshal", func(in received, m apiMessage) error { return proto.Unmarshal(in.data, m) }},
		{"UnmarshalVT", func(in received, m apiMessage) error { return m.UnmarshalVT(in.data) }},
		{"Codec", func(in received, m apiMessage) error { return codec.Unmarshal(in.buffers, m) }},
		// As gRPC hands over a message of more than one HTTP/2 DATA frame: in 16 KiB buffers.
		{"Codec-frames", func(in received, m apiMessage) error { return codec.Unmarshal(in.frames, m) }},
	}
	messages := []struct {
		name string
		data []byte
		new  func() apiMessage
	}{
		{"book-depth10", sampleBookMessage(false), func() apiMessage { return &v1.StreamBookResponse{} }},
		{"book-depth10-orders", sampleBookMessage(true), func() apiMessage { return &v1.StreamBookResponse{} }},
		{"events-4096", realisticBatch(4096), func() apiMessage { return &v1.StreamEventsResponse{} }},
	}
	for _, msg := range messages {
		in := received{msg.data, mem.BufferSlice{mem.SliceBuffer(msg.data)}, inFrames(msg.data)}
		for _, dec := range decoders {
			b.Run(msg.name+"/"+dec.name, func(b *testing.B) {
				b.SetBytes(int64(len(msg.data)))
				b.ReportAllocs()
				for b.Loop() {
					if err := dec.decode(in, msg.new()); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkDecodeReused decodes every book message into the same one, as a book stream with
// ReuseUpdates does, against a new message each time.
func BenchmarkDecodeReused(b *testing.B) {
	codec := mbostream.Codec()
	for _, orders := range []bool{false, true} {
		data := mem.BufferSlice{mem.SliceBuffer(sampleBookMessage(orders))}
		name := map[bool]string{false: "book-depth10", true: "book-depth10-orders"}[orders]
		b.Run(name+"/new", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := codec.Unmarshal(data, &v1.StreamBookResponse{}); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/reused", func(b *testing.B) {
			b.ReportAllocs()
			m := &v1.StreamBookResponse{}
			for b.Loop() {
				if err := codec.Unmarshal(data, mbostream.DecodedAgain(m)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
