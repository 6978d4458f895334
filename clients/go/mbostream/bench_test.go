package mbostream_test

// The event stream's hot path, measured: parsing one 4,096-record StreamEventsResponse and
// wrapping it as an EventBatch (`go test -run - -bench . ./mbostream/`).

import (
	"math/rand/v2"
	"testing"

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
