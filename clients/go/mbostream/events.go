package mbostream

// Wire room: StreamEventsResponse column batches as Go column slices, without copying.

import (
	v1 "github.com/mbostream/mbostream/clients/go/gen/mbostream/v1"
)

// EventBatch is one StreamEvents batch, column-wise: entry i of every column belongs to record i,
// in replay order. The columns are the decoded message's own slices — nothing is copied and
// nothing is allocated per record; read a record as a value with Record(i).
type EventBatch struct {
	// ReplaySequence is each record's server replay position. In a snapshot batch every entry is
	// the position the live records continue after.
	ReplaySequence []uint64
	TsEvent        []uint64 // matching-engine timestamp, ns since the UNIX epoch
	TsRecv         []uint64 // capture-server receive timestamp, ns since the UNIX epoch
	OrderID        []uint64
	Price          []int64 // units of 1e-9; UndefPrice when the record has none
	Size           []uint32
	Action         []byte // ActionAdd, ActionCancel, …
	Side           []byte // SideBid, SideAsk, SideNone
	Flags          []byte // DBN flag bits; see Flags
	Sequence       []uint32
	InstrumentID   []uint32
	PublisherID    []uint32

	// BatchSequence is the replay position of the last record: the resume point after the batch.
	BatchSequence uint64
	// Snapshot is true for batches of book-snapshot records (a Clear, then one Add per order).
	Snapshot bool
	// TsOut is the server's publication time, ns since the UNIX epoch.
	TsOut uint64
	// Epoch is the server run the replay positions belong to ("" from servers predating epochs).
	Epoch string

	// NewSnapshot marks the first batch of a snapshot that replaces everything the stream handed
	// out before it: state built from earlier batches must be dropped. (When the selected books
	// are all empty the snapshot has no records, and the mark is on the first live batch.)
	NewSnapshot bool
	// ResetCause, on a NewSnapshot batch that is not the stream's first snapshot, is why the
	// stream could not resume and started over: an *RPCError matching ErrResumeOutOfRange or
	// ErrEpochChanged, or a *ContinuityError.
	ResetCause error
}

// Record is one MBO record of an EventBatch, as a value.
type Record struct {
	ReplaySequence uint64
	TsEvent        uint64
	TsRecv         uint64
	OrderID        uint64
	Price          int64
	Size           uint32
	Action         byte
	Side           byte
	Flags          Flags
	Sequence       uint32
	InstrumentID   uint32
	PublisherID    uint32
}

// Len is the number of records in the batch.
func (b *EventBatch) Len() int { return len(b.ReplaySequence) }

// Record is record i (0 <= i < Len()).
func (b *EventBatch) Record(i int) Record {
	return Record{
		ReplaySequence: b.ReplaySequence[i],
		TsEvent:        b.TsEvent[i],
		TsRecv:         b.TsRecv[i],
		OrderID:        b.OrderID[i],
		Price:          b.Price[i],
		Size:           b.Size[i],
		Action:         b.Action[i],
		Side:           b.Side[i],
		Flags:          Flags(b.Flags[i]),
		Sequence:       b.Sequence[i],
		InstrumentID:   b.InstrumentID[i],
		PublisherID:    b.PublisherID[i],
	}
}

// DecodeEvents wraps a received StreamEventsResponse as an EventBatch (the columns are shared,
// not copied). It fails with *MalformedBatchError when the columns differ in length.
func DecodeEvents(m *v1.StreamEventsResponse) (*EventBatch, error) {
	b := &EventBatch{
		ReplaySequence: m.ReplaySequence,
		TsEvent:        m.TsEvent,
		TsRecv:         m.TsRecv,
		OrderID:        m.OrderId,
		Price:          m.Price,
		Size:           m.Size,
		Action:         m.Action,
		Side:           m.Side,
		Flags:          m.Flags,
		Sequence:       m.Sequence,
		InstrumentID:   m.InstrumentId,
		PublisherID:    m.PublisherId,
		BatchSequence:  m.BatchSequence,
		Snapshot:       m.Snapshot,
		TsOut:          m.TsOut,
		Epoch:          m.Epoch,
	}
	n := len(b.ReplaySequence)
	lengths := [...]struct {
		name string
		len  int
	}{
		{"ts_event", len(b.TsEvent)}, {"ts_recv", len(b.TsRecv)}, {"order_id", len(b.OrderID)},
		{"price", len(b.Price)}, {"size", len(b.Size)}, {"action", len(b.Action)}, {"side", len(b.Side)},
		{"flags", len(b.Flags)}, {"sequence", len(b.Sequence)}, {"instrument_id", len(b.InstrumentID)},
		{"publisher_id", len(b.PublisherID)},
	}
	for _, c := range lengths {
		if c.len != n {
			return nil, &MalformedBatchError{Column: c.name, Len: c.len, Expected: n}
		}
	}
	return b, nil
}
