package testserver

import (
	"bytes"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy is a real TCP proxy in front of a server whose connections can all be cut at once, or
// frozen: kept open but no longer forwarding a byte, as a dead link looks to both ends.
type Proxy struct {
	listener net.Listener
	upstream string
	accepted atomic.Int64
	mu       sync.Mutex
	links    map[*link]struct{}
	// sent is what clients sent, every connection's bytes one after the other (the first
	// maxRecorded of them): what ClientBytes returns.
	sent bytes.Buffer
}

// maxRecorded bounds what a proxy keeps of what clients send.
const maxRecorded = 4 << 20

// link is one proxied connection: the client's side and the server's.
type link struct {
	proxy    *Proxy
	down, up net.Conn
	frozen   atomic.Bool
	done     chan struct{}
	once     sync.Once
}

// StartProxy listens on a free port and forwards every connection to upstream; the test's
// cleanup closes it.
func StartProxy(t testing.TB, upstream string) *Proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{listener: l, upstream: upstream, links: map[*link]struct{}{}}
	go p.accept()
	t.Cleanup(func() {
		_ = l.Close()
		p.DropAll()
	})
	return p
}

// Address is the proxy's HOST:PORT.
func (p *Proxy) Address() string { return p.listener.Addr().String() }

// Accepted is the number of connections the proxy has accepted so far.
func (p *Proxy) Accepted() int { return int(p.accepted.Load()) }

func (p *Proxy) accept() {
	for {
		down, err := p.listener.Accept()
		if err != nil {
			return
		}
		p.accepted.Add(1)
		up, err := net.DialTimeout("tcp", p.upstream, StopTimeout)
		if err != nil {
			_ = down.Close()
			continue
		}
		l := &link{proxy: p, down: down, up: up, done: make(chan struct{})}
		p.mu.Lock()
		p.links[l] = struct{}{}
		p.mu.Unlock()
		go l.pump(down, up)
		go l.pump(up, down)
	}
}

// pump forwards src to dst, holding each read while the link is frozen.
func (l *link) pump(src, dst net.Conn) {
	defer l.close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		for l.frozen.Load() {
			select {
			case <-l.done:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
		if n > 0 && src == l.down {
			l.proxy.record(buf[:n])
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// close resets both sides (a reset, not an orderly close) and releases frozen pumps.
func (l *link) close() {
	l.once.Do(func() {
		close(l.done)
		for _, c := range []net.Conn{l.down, l.up} {
			if tcp, ok := c.(*net.TCPConn); ok {
				_ = tcp.SetLinger(0)
			}
			_ = c.Close()
		}
	})
}

func (p *Proxy) record(b []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sent.Write(b[:min(len(b), maxRecorded-p.sent.Len())])
}

// ClientBytes is a copy of what clients sent through the proxy so far (the first 4 MiB): with one
// connection, its HTTP/2 preface and frames.
func (p *Proxy) ClientBytes() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Clone(p.sent.Bytes())
}

// DropAll resets every proxied connection (both sides) and returns how many sockets it cut.
func (p *Proxy) DropAll() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 2 * len(p.links)
	for l := range p.links {
		l.close()
	}
	clear(p.links)
	return n
}

// Freeze stops forwarding on every connection open now, in both directions, without closing
// any (later connections are forwarded as usual); it returns how many connections it froze.
func (p *Proxy) Freeze() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for l := range p.links {
		select {
		case <-l.done: // already closed
		default:
			if !l.frozen.Swap(true) {
				n++
			}
		}
	}
	return n
}
