package testserver

import (
	"bytes"
	"testing"

	"golang.org/x/net/http2"
)

// ClientFrames is what a client sent on one connection: its SETTINGS, the increments of its
// connection-level WINDOW_UPDATEs in order, and its PINGs (not acknowledgements).
type ClientFrames struct {
	Settings    map[http2.SettingID]uint32
	ConnUpdates []uint32
	Pings       int
}

// ReadClientFrames reads the frames of the first connection in b (what Proxy.ClientBytes gives).
func ReadClientFrames(t testing.TB, b []byte) ClientFrames {
	t.Helper()
	if !bytes.HasPrefix(b, []byte(http2.ClientPreface)) {
		t.Fatalf("the client's bytes do not start with HTTP/2's preface: %q", b[:min(len(b), 24)])
	}
	framer := http2.NewFramer(nil, bytes.NewReader(b[len(http2.ClientPreface):]))
	framer.SetMaxReadFrameSize(1 << 24)
	sent := ClientFrames{Settings: map[http2.SettingID]uint32{}}
	for {
		f, err := framer.ReadFrame()
		if err != nil { // the end of what was recorded
			return sent
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = f.ForeachSetting(func(s http2.Setting) error { sent.Settings[s.ID] = s.Val; return nil })
			}
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				sent.ConnUpdates = append(sent.ConnUpdates, f.Increment)
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				sent.Pings++
			}
		}
	}
}
