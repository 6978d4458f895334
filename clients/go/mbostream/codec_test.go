package mbostream_test

// The codec: proto.Marshal's bytes for every message of the API, decoded back whole; other
// messages through protobuf-go; the real server's messages decoded as proto.Unmarshal decodes
// them; and the codec on the wire of a connection Dial opens.

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/wrapperspb"

	v1 "github.com/mbostream/mbostream/clients/go/gen/mbostream/v1"
	"github.com/mbostream/mbostream/clients/go/mbostream"
)

// apiMessageTypes is every message type of the API's three files.
func apiMessageTypes(t *testing.T) []protoreflect.MessageType {
	t.Helper()
	var types []protoreflect.MessageType
	var walk func(protoreflect.MessageDescriptors)
	walk = func(descs protoreflect.MessageDescriptors) {
		for i := range descs.Len() {
			d := descs.Get(i)
			if d.IsMapEntry() {
				continue
			}
			mt, err := protoregistry.GlobalTypes.FindMessageByName(d.FullName())
			if err != nil {
				t.Fatal(err)
			}
			types = append(types, mt)
			walk(d.Messages())
		}
	}
	for _, file := range []protoreflect.FileDescriptor{
		v1.File_mbostream_v1_book_proto, v1.File_mbostream_v1_market_data_proto, v1.File_mbostream_v1_replay_proto,
	} {
		walk(file.Messages())
	}
	return types
}

// fill sets every field of m to a value other than its default: two elements in each list, one
// entry in each map (whose order on the wire nothing fixes), and in each oneof its member number
// variant (modulo its size).
func fill(m protoreflect.Message, variant int) {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if oneof := fd.ContainingOneof(); oneof != nil && !oneof.IsSynthetic() &&
			oneof.Fields().Get(variant%oneof.Fields().Len()) != fd {
			continue
		}
		switch {
		case fd.IsMap():
			entries := m.Mutable(fd).Map()
			entries.Set(sample(fd.MapKey(), nil).MapKey(), sample(fd.MapValue(), entries.NewValue))
		case fd.IsList():
			list := m.Mutable(fd).List()
			for range 2 {
				list.Append(sample(fd, list.NewElement))
			}
		case fd.Message() != nil:
			fill(m.Mutable(fd).Message(), variant)
		default:
			m.Set(fd, sample(fd, nil))
		}
	}
}

// sample is a value of fd's kind other than its default; a message (from newElement) is filled.
func sample(fd protoreflect.FieldDescriptor, newElement func() protoreflect.Value) protoreflect.Value {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(true)
	case protoreflect.EnumKind:
		values := fd.Enum().Values()
		return protoreflect.ValueOfEnum(values.Get(values.Len() - 1).Number())
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(-7)
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(-(1 << 40))
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(7)
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(1<<63 + 1)
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(0.5)
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(2.5)
	case protoreflect.StringKind:
		return protoreflect.ValueOfString("order_not_found")
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte("AB"))
	case protoreflect.MessageKind:
		v := newElement()
		fill(v.Message(), 0)
		return v
	}
	panic(fmt.Sprintf("no sample for %s (%s)", fd.FullName(), fd.Kind()))
}

// variants is how many fills it takes for every oneof member of md to be set once.
func variants(md protoreflect.MessageDescriptor) int {
	n := 1
	for i := range md.Oneofs().Len() {
		if oneof := md.Oneofs().Get(i); !oneof.IsSynthetic() {
			n = max(n, oneof.Fields().Len())
		}
	}
	return n
}

// TestCodecMatchesProtobufGo checks every message of the API, each oneof member in turn: the codec
// writes proto.Marshal's bytes (deterministic) and reads them back to an equal message, from one
// buffer or from several, into a new message or over one that held another.
func TestCodecMatchesProtobufGo(t *testing.T) {
	codec := mbostream.Codec()
	types := apiMessageTypes(t)
	if len(types) < 20 {
		t.Fatalf("found %d message types: the walk of the API's files missed some", len(types))
	}
	for _, mt := range types {
		for variant := range variants(mt.Descriptor()) {
			t.Run(fmt.Sprintf("%s/%d", mt.Descriptor().Name(), variant), func(t *testing.T) {
				m := mt.New().Interface()
				if _, ok := m.(interface{ UnmarshalVT([]byte) error }); !ok {
					t.Fatalf("%T has no generated UnmarshalVT: the codec would fall back to protobuf-go", m)
				}
				fill(m.ProtoReflect(), variant)
				want, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
				if err != nil {
					t.Fatal(err)
				}
				data, err := codec.Marshal(m)
				if err != nil {
					t.Fatal(err)
				}
				if got := data.Materialize(); !bytes.Equal(got, want) {
					t.Fatalf("codec wrote\n%x\nproto.Marshal writes\n%x", got, want)
				}
				half := len(want) / 2
				for name, received := range map[string]mem.BufferSlice{
					"one buffer":   {mem.SliceBuffer(want)},
					"two buffers":  {mem.SliceBuffer(want[:half]), mem.SliceBuffer(want[half:])},
					"over another": {mem.SliceBuffer(want)},
				} {
					got := mt.New().Interface()
					if name == "over another" {
						fill(got.ProtoReflect(), variant+1)
					}
					if err := codec.Unmarshal(received, got); err != nil {
						t.Fatalf("%s: %v", name, err)
					}
					if !proto.Equal(got, m) {
						t.Errorf("%s: decoded\n%v\nwant\n%v", name, got, m)
					}
				}
			})
		}
	}
}

// TestCodecMapOfSeveralEntries: a map's entries go in Go's map order (MarshalVT has no
// deterministic mode), so only what they decode to is compared.
func TestCodecMapOfSeveralEntries(t *testing.T) {
	book := &v1.BookSnapshot{InstrumentId: 7, AnomalyCounts: map[string]uint64{
		"order_not_found": 3, "duplicate_order_id": 1, "crossed_book": 12, "size_underflow": 2,
	}}
	data, err := mbostream.Codec().Marshal(book)
	if err != nil {
		t.Fatal(err)
	}
	got := &v1.BookSnapshot{}
	if err := proto.Unmarshal(data.Materialize(), got); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, book) || data.Len() != proto.Size(book) {
		t.Errorf("decoded %v (%d bytes), want %v (%d bytes)", got, data.Len(), book, proto.Size(book))
	}
}

// TestCodecFallsBackToProtobufGo: a message without generated methods goes through proto.Marshal
// and proto.Unmarshal; what is no protobuf message is refused.
func TestCodecFallsBackToProtobufGo(t *testing.T) {
	codec := mbostream.Codec()
	m := wrapperspb.String("ESZ6")
	if _, ok := any(m).(interface{ UnmarshalVT([]byte) error }); ok {
		t.Fatal("the fallback needs a message without UnmarshalVT")
	}
	data, err := codec.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := proto.Marshal(m); !bytes.Equal(data.Materialize(), want) {
		t.Fatalf("codec wrote %x, proto.Marshal writes %x", data.Materialize(), want)
	}
	got := &wrapperspb.StringValue{}
	if err := codec.Unmarshal(data, got); err != nil || got.GetValue() != "ESZ6" {
		t.Fatalf("decoded %v, %v", got, err)
	}
	if _, err := codec.Marshal(42); err == nil {
		t.Error("marshalled an int")
	}
	var s string
	if err := codec.Unmarshal(data, &s); err == nil {
		t.Error("unmarshalled into a string")
	}
}

// bothDecoders is a codec for a test's calls that decodes each message received by proto.Unmarshal,
// which the call returns, and by mbostream.Codec(), and keeps both.
type bothDecoders struct {
	mu    sync.Mutex
	pairs [][2]proto.Message // {proto.Unmarshal's, the codec's}
}

func (*bothDecoders) Name() string { return "proto" }

func (*bothDecoders) Marshal(v any) (mem.BufferSlice, error) {
	data, err := proto.Marshal(v.(proto.Message))
	return mem.BufferSlice{mem.SliceBuffer(data)}, err
}

func (c *bothDecoders) Unmarshal(data mem.BufferSlice, v any) error {
	reference := v.(proto.Message)
	if err := proto.Unmarshal(data.Materialize(), reference); err != nil {
		return err
	}
	decoded := reference.ProtoReflect().New().Interface()
	if err := mbostream.Codec().Unmarshal(data, decoded); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pairs = append(c.pairs, [2]proto.Message{reference, decoded})
	return nil
}

// testCodecReadsTheServersMessages decodes what the real server sends — its natively encoded book
// messages with their appended per-client fields, books with orders, combined books, event
// batches, a snapshot's — both ways, and finds the same messages.
func testCodecReadsTheServersMessages(ctx context.Context, t *testing.T, client *mbostream.Client, infos []*v1.InstrumentInfo) {
	ctx, cancel := context.WithCancel(ctx) // ends the streams
	defer cancel()
	both := &bothDecoders{}
	decodeBoth := grpc.ForceCodecV2(both)
	market := v1.NewMarketDataServiceClient(client.Conn())
	if _, err := market.ListInstruments(ctx, &v1.ListInstrumentsRequest{}, decodeBoth); err != nil {
		t.Fatal(err)
	}
	for _, info := range infos {
		req := &v1.GetBookRequest{Instrument: &v1.GetBookRequest_InstrumentId{InstrumentId: info.GetInstrumentId()}, IncludeOrders: true}
		if _, err := market.GetBook(ctx, req, decodeBoth); err != nil {
			t.Fatal(err)
		}
	}
	for _, combine := range []bool{false, true} {
		stream, err := market.StreamBook(ctx, &v1.StreamBookRequest{Depth: 10, IncludeOrders: true, CombineBooks: combine}, decodeBoth)
		if err != nil {
			t.Fatal(err)
		}
		for range 30 {
			if _, err := stream.Recv(); err != nil {
				t.Fatal(err)
			}
		}
	}
	events, err := market.StreamEvents(ctx, &v1.StreamEventsRequest{WithSnapshot: true}, decodeBoth)
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if _, err := events.Recv(); err != nil {
			t.Fatal(err)
		}
	}

	both.mu.Lock()
	defer both.mu.Unlock()
	received := map[string]int{}
	for _, pair := range both.pairs {
		received[string(pair[0].ProtoReflect().Descriptor().Name())]++
		if !proto.Equal(pair[0], pair[1]) {
			t.Errorf("the codec decoded\n%v\nproto.Unmarshal decodes\n%v", pair[1], pair[0])
		}
	}
	if received["GetBookResponse"] != len(infos) || received["StreamBookResponse"] != 60 || received["StreamEventsResponse"] != 10 {
		t.Errorf("decoded %v", received)
	}
}

// contentTypes is a MarketDataService that answers GetBook and StreamBook with one book and
// records the content-type of each call.
type contentTypes struct {
	v1.UnimplementedMarketDataServiceServer
	book *v1.BookSnapshot
	mu   sync.Mutex
	seen []string
}

func (s *contentTypes) record(ctx context.Context) {
	md, _ := metadata.FromIncomingContext(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen = append(s.seen, md.Get("content-type")...)
}

func (s *contentTypes) calls() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.seen...)
}

func (s *contentTypes) GetBook(ctx context.Context, _ *v1.GetBookRequest) (*v1.GetBookResponse, error) {
	s.record(ctx)
	return &v1.GetBookResponse{Book: s.book, Epoch: "e"}, nil
}

func (s *contentTypes) StreamBook(_ *v1.StreamBookRequest, stream grpc.ServerStreamingServer[v1.StreamBookResponse]) error {
	s.record(stream.Context())
	if err := stream.Send(&v1.StreamBookResponse{Book: s.book, IsSnapshot: true, TsOut: 1, Epoch: "e"}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

// TestDialUsesTheCodec: a Client's calls go with the codec's content-type ("application/grpc+proto",
// where a connection with gRPC-Go's defaults sends "application/grpc") and its books arrive whole.
func TestDialUsesTheCodec(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
	defer cancel()
	impl := &contentTypes{book: sampleBook(true)}
	address := serveMarketData(t, impl)

	client := dial(t, address)
	book, err := client.GetBook(ctx, mbostream.ID(5002), mbostream.BookOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(book.Snapshot, impl.book) {
		t.Errorf("GetBook gave %v, the server sent %v", book.Snapshot, impl.book)
	}
	s := client.StreamBook(ctx, mbostream.BookStreamRequest{})
	defer s.Close()
	if !s.Next() {
		t.Fatal(s.Err())
	}
	if u := s.Update(); len(u.Books) != 1 || !proto.Equal(u.Books[0], impl.book) {
		t.Errorf("StreamBook gave %v, the server sent %v", u.Books, impl.book)
	}
	if got := impl.calls(); len(got) != 2 || got[0] != "application/grpc+proto" || got[1] != "application/grpc+proto" {
		t.Errorf("the Client's calls came as %q, want the codec's application/grpc+proto", got)
	}

	plain, err := grpc.NewClient(address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if _, err := v1.NewMarketDataServiceClient(plain).GetBook(ctx, &v1.GetBookRequest{}); err != nil {
		t.Fatal(err)
	}
	if got := impl.calls(); len(got) != 3 || got[2] != "application/grpc" {
		t.Errorf("gRPC-Go's defaults came as %q, want application/grpc (the check tells the codecs apart)", got)
	}
}
