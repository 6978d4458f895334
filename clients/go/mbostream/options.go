package mbostream

// Settings room: Dial's options, validated once, turned into gRPC dial options in one place.

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
)

// DefaultMaxMessageSize is the default largest message received: a snapshot batch holds a whole
// book in one message, and the server may send up to 64 MiB.
const DefaultMaxMessageSize = 64 << 20

// DefaultCallTimeout is the default deadline of each unary call (streams have none).
const DefaultCallTimeout = 10 * time.Second

// DefaultStreamWindow and DefaultConnWindow are the HTTP/2 receive windows the client opens by
// default (per stream, per connection): as large as gRPC-Go's own estimate may grow them (16 MiB
// a connection), but fixed, so that the client does not probe the bandwidth with a PING after
// each burst of data, each of which the server must read and answer with a write of its own:
// with 1,000 book streams that doubled the server's writes (docs/performance.md, "Flow-control
// windows"). WithFlowControlWindows(0, 0) restores the estimate.
const (
	DefaultStreamWindow = 4 << 20
	DefaultConnWindow   = 16 << 20
)

// minWindow is HTTP/2's initial window, the smallest gRPC-Go takes (a smaller one it ignores).
const minWindow = 64 << 10

// minKeepaliveTime is gRPC-Go's floor, and the server's minimum ping interval without data.
const minKeepaliveTime = 10 * time.Second

// Option configures Dial.
type Option func(*settings)

type settings struct {
	tls              *tls.Config
	token            string
	keepaliveTime    time.Duration
	keepaliveTimeout time.Duration
	maxMessageSize   int
	callTimeout      time.Duration
	logger           *slog.Logger
	traceparent      bool
	streamWindow     int32
	connWindow       int32
	extra            []grpc.DialOption
}

func defaultSettings() settings {
	return settings{
		keepaliveTime:    30 * time.Second,
		keepaliveTimeout: 10 * time.Second,
		maxMessageSize:   DefaultMaxMessageSize,
		callTimeout:      DefaultCallTimeout,
		logger:           slog.Default(),
		streamWindow:     DefaultStreamWindow,
		connWindow:       DefaultConnWindow,
	}
}

// WithTLS connects over TLS with cfg (a nil cfg uses the system roots). Without it the
// connection is plaintext, as the server listens by default.
func WithTLS(cfg *tls.Config) Option {
	return func(s *settings) {
		if cfg == nil {
			cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		s.tls = cfg
	}
}

// WithBearerToken sends "authorization: Bearer <token>" on every call, as the ReplayService
// requires. Over plaintext it is only allowed to a loopback target: use WithTLS elsewhere.
func WithBearerToken(token string) Option {
	return func(s *settings) { s.token = token }
}

// WithKeepalive pings the server after interval without activity and drops the connection when
// no answer comes within timeout (defaults 30 s and 10 s; interval at least 10 s, the server's
// minimum).
func WithKeepalive(interval, timeout time.Duration) Option {
	return func(s *settings) { s.keepaliveTime, s.keepaliveTimeout = interval, timeout }
}

// WithMaxMessageSize sets the largest message the client accepts, in bytes (default 64 MiB).
func WithMaxMessageSize(bytes int) Option {
	return func(s *settings) { s.maxMessageSize = bytes }
}

// WithCallTimeout sets the deadline of each unary call (default 10 s; 0: none beyond the
// caller's context).
func WithCallTimeout(d time.Duration) Option {
	return func(s *settings) { s.callTimeout = d }
}

// WithLogger sets where streams report reconnections, cut-offs and re-snapshots (default
// slog.Default()).
func WithLogger(logger *slog.Logger) Option {
	return func(s *settings) { s.logger = logger }
}

// WithFlowControlWindows sets the HTTP/2 receive windows, in bytes: each stream's and the
// connection's (defaults DefaultStreamWindow and DefaultConnWindow). They bound what the server may
// send ahead of the application's reading: a stream's window, what one slow stream holds in
// memory; the connection's, what all its streams do. A stream receives at most its window per
// round trip (4 MiB over a 50 ms one: 80 MiB/s). The stream's at least 64 KiB, the connection's at
// least the stream's; (0, 0) lets gRPC-Go size them from its bandwidth estimate instead (a PING
// after each burst of data, which the server answers).
func WithFlowControlWindows(stream, conn int32) Option {
	return func(s *settings) { s.streamWindow, s.connWindow = stream, conn }
}

// WithDialOptions adds raw gRPC dial options, applied after the client's own.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(s *settings) { s.extra = append(s.extra, opts...) }
}

func (s *settings) validate(target string) error {
	switch {
	case strings.TrimSpace(target) == "":
		return &ConfigError{"target", "must be HOST:PORT, got an empty string"}
	case s.keepaliveTime < minKeepaliveTime:
		return &ConfigError{"WithKeepalive", fmt.Sprintf("interval must be >= %s, got %s", minKeepaliveTime, s.keepaliveTime)}
	case s.keepaliveTimeout <= 0:
		return &ConfigError{"WithKeepalive", fmt.Sprintf("timeout must be > 0, got %s", s.keepaliveTimeout)}
	case s.maxMessageSize <= 0:
		return &ConfigError{"WithMaxMessageSize", fmt.Sprintf("must be > 0 bytes, got %d", s.maxMessageSize)}
	case s.callTimeout < 0:
		return &ConfigError{"WithCallTimeout", fmt.Sprintf("must be >= 0, got %s", s.callTimeout)}
	case !(s.streamWindow == 0 && s.connWindow == 0) && (s.streamWindow < minWindow || s.connWindow < s.streamWindow):
		return &ConfigError{"WithFlowControlWindows", fmt.Sprintf(
			"want 0, 0 (estimated) or a stream window >= %d bytes and a connection window >= it, got %d, %d", minWindow, s.streamWindow, s.connWindow)}
	case s.logger == nil:
		return &ConfigError{"WithLogger", "must not be nil"}
	case s.token != "" && s.tls == nil && !isLoopback(target):
		return &ConfigError{"WithBearerToken", fmt.Sprintf(
			"refusing to send a token in plaintext to %s: add WithTLS (plaintext is allowed to loopback only)", target)}
	}
	return nil
}

// isLoopback reports whether a HOST:PORT target (optionally "dns:///" or "passthrough:///")
// names this machine.
func isLoopback(target string) bool {
	if _, rest, found := strings.Cut(target, ":///"); found {
		target = rest
	}
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		host = target
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

func (s *settings) dialOptions() []grpc.DialOption {
	transport := insecure.NewCredentials()
	if s.tls != nil {
		transport = credentials.NewTLS(s.tls)
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(transport),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(s.maxMessageSize), grpc.ForceCodecV2(Codec())),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: s.keepaliveTime, Timeout: s.keepaliveTimeout}),
		// Fail fast while the server is down; the reconnect policy belongs to the streams (Backoff).
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           grpcbackoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
	}
	if s.streamWindow != 0 {
		opts = append(opts, grpc.WithInitialWindowSize(s.streamWindow), grpc.WithInitialConnWindowSize(s.connWindow))
	}
	if s.token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer{token: s.token, secure: s.tls != nil}))
	}
	if s.traceparent {
		opts = append(opts, traceInterceptors(s.logger)...)
	}
	return append(opts, s.extra...)
}

// bearer sends the operator token as per-RPC metadata.
type bearer struct {
	token  string
	secure bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

// RequireTransportSecurity is false only for plaintext to loopback, which Dial already checked.
func (b bearer) RequireTransportSecurity() bool { return b.secure }
