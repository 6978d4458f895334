package mbostream

// Codec room: how messages become bytes on every connection Dial opens, without reflection.

import (
	"fmt"
	"sync"

	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"

	v1 "github.com/mbostream/mbostream/clients/go/gen/mbostream/v1"
)

// vtMessage is a message with the methods protoc-gen-go-vtproto generates (every message of
// clients/go/gen).
type vtMessage interface {
	MarshalVT() ([]byte, error)
	UnmarshalVT(dAtA []byte) error
	Reset()
}

// reusable is a message decoded into again and again (BookStreamRequest.ReuseUpdates). Its type
// was generated with vtprotobuf's pool feature (the book messages: buf.gen.yaml), whose ResetVT
// empties it but keeps its slices and their elements for the next decode to fill without
// allocating. Only such a message is emptied that way: any other gets Reset, which leaves what a
// caller kept of its previous contents alone.
type reusable interface {
	ResetVT()
	decodedAgain()
}

// reusedBookResponse marks the one message a book stream with ReuseUpdates decodes into. It
// embeds the message, so any codec can decode into it.
type reusedBookResponse struct{ *v1.StreamBookResponse }

func (reusedBookResponse) decodedAgain() {}

// Codec is the gRPC codec Dial installs on its connection: protobuf, the same bytes as gRPC-Go's
// own codec, through the generated MarshalVT/UnmarshalVT code of this API's messages instead of
// protobuf-go's reflection (a book decodes in half to two thirds of the time, with the same
// allocations: README, "Codec"); any other message goes through proto.Marshal and proto.Unmarshal.
// It is installed per connection, never registered: the process's other gRPC connections keep
// their codec. For a connection of your own: grpc.WithDefaultCallOptions(grpc.ForceCodecV2(
// mbostream.Codec())).
//
// Where it differs from protobuf-go: the generated code does not check that string fields are valid
// UTF-8 (the server's strings, symbols and names, are ASCII), and has no deterministic mode (a map's
// entries go in Go's map order, as proto.Marshal's do by default; the client sends no map).
//
// Each decoded message is newly allocated and the caller's to keep (BookUpdate.Books hands them
// out), except in a book stream with BookStreamRequest.ReuseUpdates, which decodes every message
// into one of its own (reusable, below). Only such a stream's message gives parts back to the
// generated pools (its ResetVT puts its book, BBO and trade there before the next decode), once the
// caller's hold on them has ended with the next Next; a message handed out for keeps never does, so
// no decode anywhere in the process can overwrite it.
func Codec() encoding.CodecV2 { return codec{} }

type codec struct{}

// Name is gRPC-Go's protobuf codec's: calls go as "application/grpc+proto", which gRPC servers,
// Envoy and the server's book port take as protobuf.
func (codec) Name() string { return grpcproto.Name }

func (codec) Marshal(v any) (mem.BufferSlice, error) {
	var b []byte
	var err error
	if m, ok := v.(vtMessage); ok {
		b, err = m.MarshalVT()
	} else if pm, ok := protobufMessage(v); ok {
		b, err = proto.Marshal(pm)
	} else {
		err = fmt.Errorf("mbostream codec: cannot marshal %T, not a protobuf message", v)
	}
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

func (codec) Unmarshal(data mem.BufferSlice, v any) error {
	// A message within one buffer is read where it is; one over several (an event batch of more
	// than one HTTP/2 frame) is joined in a scratch buffer first.
	var b []byte
	if len(data) == 1 {
		b = data[0].ReadOnlyData()
	} else {
		scratch := joined.Get().(*[]byte)
		defer joined.Put(scratch)
		if n := data.Len(); cap(*scratch) < n {
			*scratch = make([]byte, n)
		} else {
			*scratch = (*scratch)[:n]
		}
		b = *scratch
		data.CopyTo(b)
	}
	// Both decoders copy every string and bytes field out of b, which is gRPC's or the pool's again
	// on return.
	if m, ok := v.(vtMessage); ok {
		// UnmarshalVT merges into what m holds; proto.Unmarshal replaces it.
		if r, ok := v.(reusable); ok {
			r.ResetVT()
		} else {
			m.Reset()
		}
		return m.UnmarshalVT(b)
	}
	if pm, ok := protobufMessage(v); ok {
		return proto.Unmarshal(b, pm)
	}
	return fmt.Errorf("mbostream codec: cannot unmarshal into %T, not a protobuf message", v)
}

// joined holds the scratch buffers Unmarshal joins a message of several buffers in. Unlike
// gRPC's buffer pool (MaterializeToBuffer), which clears each buffer it hands out, it gives a
// buffer back as it was: Unmarshal overwrites the part it reads. Clearing took an eighth of the Go
// load client's CPU at 500k records/s, where a StreamEvents batch is hundreds of KiB
// (docs/performance.md, "The Go client decodes into the same memory").
var joined = sync.Pool{New: func() any { return new([]byte) }}

// protobufMessage is v as a protobuf-go message, APIv2 or (adapted) the older APIv1.
func protobufMessage(v any) (proto.Message, bool) {
	switch m := v.(type) {
	case proto.Message:
		return m, true
	case protoadapt.MessageV1:
		return protoadapt.MessageV2Of(m), true
	}
	return nil, false
}
