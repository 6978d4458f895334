package mbostream

// Trace context room: a W3C traceparent on each call (WithTraceparent), so that the edge and the
// server continue one trace per call; no OpenTelemetry dependency.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// traceparentKey is the W3C Trace Context header, lower-case as gRPC metadata keys are.
const traceparentKey = "traceparent"

// WithTraceparent starts a W3C trace for each call: a call whose outgoing metadata carries no
// traceparent (e.g. one that an OpenTelemetry interceptor set) gets a fresh one, sampled, and the
// client logs its trace id at debug level ("trace started", with method and trace_id), so the
// call can be found in the tracing backend.
func WithTraceparent() Option {
	return func(s *settings) { s.traceparent = true }
}

// NewTraceparent is a fresh W3C traceparent header value (version 00, random 16-byte trace id and
// 8-byte span id, sampled) and its trace id in hex, for callers that set the header themselves
// (metadata.AppendToOutgoingContext).
func NewTraceparent() (traceparent, traceID string) {
	var ids [24]byte
	// The all-zero ids are invalid; drawing them is a 2^-64 chance, yet a backend would drop the trace.
	for isZero(ids[:16]) || isZero(ids[16:]) {
		_, _ = rand.Read(ids[:]) // crypto/rand.Read never fails (Go 1.24+)
	}
	traceID = hex.EncodeToString(ids[:16])
	return "00-" + traceID + "-" + hex.EncodeToString(ids[16:]) + "-01", traceID
}

func isZero(b []byte) bool {
	for _, v := range b {
		if v != 0 {
			return false
		}
	}
	return true
}

// withTrace is ctx with a fresh traceparent unless its outgoing metadata has one.
func withTrace(ctx context.Context, logger *slog.Logger, method string) context.Context {
	if md, ok := metadata.FromOutgoingContext(ctx); ok && len(md.Get(traceparentKey)) > 0 {
		return ctx
	}
	traceparent, traceID := NewTraceparent()
	logger.DebugContext(ctx, "trace started", "method", method, "trace_id", traceID)
	return metadata.AppendToOutgoingContext(ctx, traceparentKey, traceparent)
}

// traceInterceptors put a traceparent on every unary call and stream of the connection.
func traceInterceptors(logger *slog.Logger) []grpc.DialOption {
	unary := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		return invoker(withTrace(ctx, logger, method), method, req, reply, cc, opts...)
	}
	stream := func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		return streamer(withTrace(ctx, logger, method), desc, cc, method, opts...)
	}
	return []grpc.DialOption{grpc.WithChainUnaryInterceptor(unary), grpc.WithChainStreamInterceptor(stream)}
}
