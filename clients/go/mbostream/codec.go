package mbostream

// Codec room: how messages become bytes on every connection Dial opens, without reflection.

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
)

// vtMessage is a message with the methods protoc-gen-go-vtproto generates (every message of
// clients/go/gen).
type vtMessage interface {
	MarshalVT() ([]byte, error)
	UnmarshalVT(dAtA []byte) error
	Reset()
}

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
// out): the generated pools are not used, since a message given back to a pool while a caller
// still holds it would be overwritten by the next one.
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
	// A message within one buffer is read where it is; one over several is joined first.
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	if m, ok := v.(vtMessage); ok {
		// UnmarshalVT merges into what m holds; proto.Unmarshal replaces it. It copies every string
		// and bytes field out of buf, which goes back to gRPC's pool on return.
		m.Reset()
		return m.UnmarshalVT(buf.ReadOnlyData())
	}
	if pm, ok := protobufMessage(v); ok {
		return proto.Unmarshal(buf.ReadOnlyData(), pm)
	}
	return fmt.Errorf("mbostream codec: cannot unmarshal into %T, not a protobuf message", v)
}

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
