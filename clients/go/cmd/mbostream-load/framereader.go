package main

// Frame reader room (--frame-reader): StreamBook streams read from HTTP/2 frames by the tool itself,
// one goroutine a connection, instead of by gRPC-Go, one goroutine a stream.
//
// With 1,000 book streams over 10 connections at 100k records/s, gRPC-Go (a goroutine woken per
// message, its buffers and flow-control bookkeeping) left the tool's core 86-92% busy reading
// 78-101k messages a second, and what it had no time to read aged in its windows: the run
// measured the tool. Reading the frames of a connection in one loop, each message decoded (in
// full, into one reused message) where it lies in the frame, read 106-116k a second at 62-66%
// (docs/performance.md, "A cheaper measuring client"). What it measures is the same as readBooks's:
// every message decoded, the same latency and held-age accounting (bookCounters.observe). It grants
// flow-control credit as it decodes, as a client keeps up; it does not reconnect (a stream that
// ends is an error, reported).

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	v1 "github.com/mbostream/mbostream/clients/go/gen/mbostream/v1"
	"github.com/mbostream/mbostream/clients/go/mbostream"
)

const (
	// frameReaderStreamWindow and frameReaderConnWindow are the receive windows the frame reader
	// opens when --book-windows does not set them: the client library's defaults.
	frameReaderStreamWindow = 4 << 20
	frameReaderConnWindow   = 16 << 20
	// frameReaderMaxFrame is the largest DATA frame the server may send (SETTINGS_MAX_FRAME_SIZE).
	frameReaderMaxFrame = 1 << 20
	// grpcPrefix is the length of a gRPC message's prefix: a compressed flag and 4 bytes of length.
	grpcPrefix = 5
)

// frameStream is one StreamBook stream on a frame reader's connection.
type frameStream struct {
	c       *bookCounters
	partial []byte // the start of a message the frames so far did not complete
	unacked uint32 // bytes received since the last stream WINDOW_UPDATE
	ended   bool
}

// frameConn is one plaintext HTTP/2 connection and the StreamBook streams read on it.
type frameConn struct {
	conn    net.Conn
	w       *bufio.Writer
	fr      *http2.Framer
	streams map[uint32]*frameStream
	open    int
	// window: the stream and connection receive windows opened; unacked: the connection's bytes
	// received since its last WINDOW_UPDATE.
	streamWindow, connWindow, unacked uint32
	msg                               v1.StreamBookResponse
	books                             []*v1.BookSnapshot
}

// readBooksByFrames opens one StreamBook stream per counter (with the request of its selection) on
// one connection to target, and reads them until ctx ends or the connection fails; each counter's
// err says how its stream ended.
func readBooksByFrames(ctx context.Context, target string, cfg config, selections [][]mbostream.Instrument, counters []*bookCounters, w window) {
	fc, err := dialFrames(ctx, target, cfg)
	if err == nil {
		defer fc.conn.Close()
		stop := context.AfterFunc(ctx, func() { _ = fc.conn.SetReadDeadline(time.Now()) })
		defer stop()
		err = fc.openStreams(target, cfg, selections, counters)
		if err == nil {
			err = fc.read(w)
		}
	}
	if ctx.Err() != nil {
		err = nil // the run's own end
	}
	for _, c := range counters {
		c.held.finish(w)
		if c.err == nil {
			c.err = err
		}
	}
}

// dialFrames connects and exchanges the connection preface and the settings.
func dialFrames(ctx context.Context, target string, cfg config) (*frameConn, error) {
	if cfg.tls != nil {
		return nil, errors.New("--frame-reader speaks plaintext HTTP/2 only")
	}
	dialCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(dialCtx, "tcp", target)
	if err != nil {
		return nil, err
	}
	fc := &frameConn{conn: conn, w: bufio.NewWriterSize(conn, 64<<10), streams: map[uint32]*frameStream{}}
	fc.streamWindow, fc.connWindow = frameReaderStreamWindow, frameReaderConnWindow
	if cfg.bookWindows != [2]int32{} {
		fc.streamWindow, fc.connWindow = uint32(cfg.bookWindows[0]), uint32(cfg.bookWindows[1])
	}
	fc.fr = http2.NewFramer(fc.w, bufio.NewReaderSize(conn, 256<<10))
	fc.fr.SetMaxReadFrameSize(frameReaderMaxFrame)
	fc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if _, err = fc.w.WriteString(http2.ClientPreface); err == nil {
		err = fc.fr.WriteSettings(
			http2.Setting{ID: http2.SettingEnablePush, Val: 0},
			http2.Setting{ID: http2.SettingInitialWindowSize, Val: fc.streamWindow},
			http2.Setting{ID: http2.SettingMaxFrameSize, Val: frameReaderMaxFrame},
		)
	}
	if err == nil && fc.connWindow > 65535 {
		err = fc.fr.WriteWindowUpdate(0, fc.connWindow-65535) // from HTTP/2's initial 65,535
	}
	if err == nil {
		err = fc.w.Flush()
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	return fc, nil
}

// openStreams waits for the server's settings (for its stream limit), then sends every stream's
// headers and its one request message.
func (fc *frameConn) openStreams(target string, cfg config, selections [][]mbostream.Instrument, counters []*bookCounters) error {
	_ = fc.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := fc.fr.ReadFrame()
	if err != nil {
		return fmt.Errorf("reading the server's settings: %w", err)
	}
	settings, ok := f.(*http2.SettingsFrame)
	if !ok || settings.IsAck() {
		return fmt.Errorf("the server's first frame is %v, not its settings", f.Header())
	}
	if limit, ok := settings.Value(http2.SettingMaxConcurrentStreams); ok && int(limit) < len(counters) {
		return fmt.Errorf("the server allows %d streams a connection, %d asked: raise --connections", limit, len(counters))
	}
	_ = fc.conn.SetReadDeadline(time.Time{})
	if err := fc.fr.WriteSettingsAck(); err != nil {
		return err
	}
	var block []byte
	enc := hpack.NewEncoder(appender{&block}) // one encoder: the server's decoder keeps its table
	for i, c := range counters {
		id := uint32(2*i + 1)
		body, err := bookRequest(cfg, selections[i]).Message().MarshalVT()
		if err != nil {
			return err
		}
		block = block[:0]
		for _, h := range [][2]string{
			{":method", "POST"}, {":scheme", "http"}, {":authority", target},
			{":path", "/mbostream.v1.MarketDataService/StreamBook"},
			{"content-type", "application/grpc"}, {"te", "trailers"},
		} {
			if err := enc.WriteField(hpack.HeaderField{Name: h[0], Value: h[1]}); err != nil {
				return err
			}
		}
		if err := fc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true}); err != nil {
			return err
		}
		message := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(body)))
		if err := fc.fr.WriteData(id, true, append(message, body...)); err != nil {
			return err
		}
		fc.streams[id] = &frameStream{c: c}
	}
	fc.open = len(counters)
	return fc.w.Flush()
}

// appender is an io.Writer that appends to a slice: hpack's encoder writes each header block there.
type appender struct{ b *[]byte }

func (a appender) Write(p []byte) (int, error) {
	*a.b = append(*a.b, p...)
	return len(p), nil
}

// read handles frames until every stream ended or the connection fails.
func (fc *frameConn) read(w window) error {
	for fc.open > 0 {
		f, err := fc.fr.ReadFrame()
		if err != nil {
			return err
		}
		switch f := f.(type) {
		case *http2.DataFrame:
			err = fc.data(w, f)
		case *http2.MetaHeadersFrame:
			fc.headers(f)
		case *http2.RSTStreamFrame:
			fc.end(f.StreamID, fmt.Errorf("stream reset by the server: %v", f.ErrCode))
		case *http2.SettingsFrame:
			if !f.IsAck() {
				err = fc.fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				err = fc.fr.WritePing(true, f.Data)
			}
		case *http2.GoAwayFrame:
			return fmt.Errorf("the server sent GOAWAY (%v)", f.ErrCode)
		}
		if err == nil && fc.w.Buffered() > 0 {
			err = fc.w.Flush()
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// data decodes the complete messages of one DATA frame, where they lie when no message is pending,
// and grants the frame's bytes back once half a window is received.
func (fc *frameConn) data(w window, f *http2.DataFrame) error {
	n := f.Header().Length // padding counts against the windows too
	s := fc.streams[f.StreamID]
	if s == nil || s.ended {
		return fc.grant(n)
	}
	data := f.Data()
	if len(s.partial) > 0 {
		s.partial = append(s.partial, data...)
		data = s.partial
	}
	now := time.Now().UnixNano()
	for len(data) >= grpcPrefix {
		size := int(binary.BigEndian.Uint32(data[1:grpcPrefix]))
		if len(data) < grpcPrefix+size {
			break
		}
		if data[0] != 0 {
			fc.end(f.StreamID, errors.New("a compressed message: the frame reader decodes none"))
			return fc.grant(n)
		}
		if err := fc.decode(w, s, now, data[grpcPrefix:grpcPrefix+size]); err != nil {
			fc.end(f.StreamID, err)
			return fc.grant(n)
		}
		data = data[grpcPrefix+size:]
	}
	s.partial = append(s.partial[:0], data...) // data may lie in s.partial itself: copy is safe forwards
	s.unacked += n
	if s.unacked >= fc.streamWindow/2 {
		if err := fc.fr.WriteWindowUpdate(f.StreamID, s.unacked); err != nil {
			return err
		}
		s.unacked = 0
	}
	return fc.grant(n)
}

// grant counts n bytes received on the connection, and returns them once half its window is.
func (fc *frameConn) grant(n uint32) error {
	fc.unacked += n
	if fc.unacked < fc.connWindow/2 {
		return nil
	}
	err := fc.fr.WriteWindowUpdate(0, fc.unacked)
	fc.unacked = 0
	return err
}

// decode takes one message of stream s, received at now.
func (fc *frameConn) decode(w window, s *frameStream, now int64, body []byte) error {
	m := &fc.msg
	m.ResetVT()
	if err := m.UnmarshalVT(body); err != nil {
		return fmt.Errorf("decoding a StreamBookResponse: %w", err)
	}
	fc.books = append(fc.books[:0], m.Books...)
	if m.Book != nil {
		fc.books = append(fc.books, m.Book)
	}
	s.c.observe(w, now, fc.books, m.IsSnapshot, m.TsOut, m.Conflated)
	return nil
}

// headers reads a stream's response headers and its trailers: a status other than OK is its error.
func (fc *frameConn) headers(f *http2.MetaHeadersFrame) {
	if status := f.PseudoValue("status"); status != "" && status != "200" {
		fc.end(f.StreamID, fmt.Errorf("HTTP status %s", status))
		return
	}
	if f.StreamEnded() {
		status, message := "", ""
		for _, h := range f.Fields {
			switch h.Name {
			case "grpc-status":
				status = h.Value
			case "grpc-message":
				message = h.Value
			}
		}
		if n, err := strconv.Atoi(status); err != nil || n != 0 {
			fc.end(f.StreamID, fmt.Errorf("StreamBook ended: grpc-status %s: %s", status, message))
			return
		}
		fc.end(f.StreamID, errors.New("StreamBook ended by the server"))
	}
}

// end marks a stream ended with err.
func (fc *frameConn) end(id uint32, err error) {
	s := fc.streams[id]
	if s == nil || s.ended {
		return
	}
	s.ended, s.partial = true, nil
	s.c.err = err
	fc.open--
}
