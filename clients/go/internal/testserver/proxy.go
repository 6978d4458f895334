package testserver

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Proxy is a real TCP proxy in front of a server whose connections can all be cut at once.
type Proxy struct {
	listener net.Listener
	upstream string
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
}

// StartProxy listens on a free port and forwards every connection to upstream; the test's
// cleanup closes it.
func StartProxy(t testing.TB, upstream string) *Proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{listener: l, upstream: upstream, conns: map[net.Conn]struct{}{}}
	go p.accept()
	t.Cleanup(func() {
		_ = l.Close()
		p.DropAll()
	})
	return p
}

// Address is the proxy's HOST:PORT.
func (p *Proxy) Address() string { return p.listener.Addr().String() }

func (p *Proxy) accept() {
	for {
		down, err := p.listener.Accept()
		if err != nil {
			return
		}
		up, err := net.DialTimeout("tcp", p.upstream, StopTimeout)
		if err != nil {
			_ = down.Close()
			continue
		}
		p.mu.Lock()
		p.conns[down], p.conns[up] = struct{}{}, struct{}{}
		p.mu.Unlock()
		go pump(down, up)
		go pump(up, down)
	}
}

func pump(src, dst net.Conn) {
	_, _ = io.Copy(dst, src)
	_ = dst.Close()
	_ = src.Close()
}

// DropAll resets every proxied connection (both sides) and returns how many sockets it cut.
func (p *Proxy) DropAll() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.conns)
	for c := range p.conns {
		if tcp, ok := c.(*net.TCPConn); ok {
			_ = tcp.SetLinger(0) // a reset, not an orderly close
		}
		_ = c.Close()
	}
	clear(p.conns)
	return n
}
