package mbostream

// Client room: the connection and the unary MarketDataService calls.

import (
	"context"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"

	v1 "github.com/mbostream/mbostream/clients/go/gen/mbostream/v1"
)

// Client is a connection to one mbostream server: one HTTP/2 connection that every call and
// stream of this Client shares. Dial several Clients to spread streams over several connections.
// A Client is safe for concurrent use.
type Client struct {
	target   string
	conn     *grpc.ClientConn
	market   v1.MarketDataServiceClient
	settings settings
	closed   atomic.Bool
}

// Dial connects to the server at target ("HOST:PORT") and returns once the connection is ready;
// ctx bounds the wait. An invalid option fails with *ConfigError, a server that cannot be reached
// before ctx ends with an *RPCError matching ErrUnavailable.
func Dial(ctx context.Context, target string, opts ...Option) (*Client, error) {
	s := defaultSettings()
	for _, opt := range opts {
		opt(&s)
	}
	if err := s.validate(target); err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(target, s.dialOptions()...)
	if err != nil {
		return nil, &ConfigError{"target", err.Error()}
	}
	conn.Connect()
	for state := conn.GetState(); state != connectivity.Ready; state = conn.GetState() {
		if !conn.WaitForStateChange(ctx, state) {
			_ = conn.Close()
			return nil, &RPCError{
				Method:  "Dial",
				Code:    codes.Unavailable,
				Message: target + " not reachable (last state " + state.String() + "): " + ctx.Err().Error(),
				kind:    ErrUnavailable,
			}
		}
	}
	return &Client{target: target, conn: conn, market: v1.NewMarketDataServiceClient(conn), settings: s}, nil
}

// Target is the address the Client was dialled with.
func (c *Client) Target() string { return c.target }

// Conn is the underlying gRPC connection, e.g. for the generated ReplayService client (the
// bearer token of WithBearerToken goes with every call on it).
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Close closes the connection; open streams end with ErrClientClosed.
func (c *Client) Close() error {
	c.closed.Store(true)
	return c.conn.Close()
}

func (c *Client) unaryContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.settings.callTimeout > 0 {
		return context.WithTimeout(ctx, c.settings.callTimeout)
	}
	return ctx, func() {}
}

// ListInstruments is every book the replay has seen so far, ordered by instrument id then
// publisher id.
func (c *Client) ListInstruments(ctx context.Context) ([]*v1.InstrumentInfo, error) {
	ctx, cancel := c.unaryContext(ctx)
	defer cancel()
	resp, err := c.market.ListInstruments(ctx, &v1.ListInstrumentsRequest{})
	if err != nil {
		return nil, errorFromStatus("ListInstruments", err)
	}
	return resp.GetInstruments(), nil
}

// BookOptions shape a GetBook answer; the zero value is the full book without orders.
type BookOptions struct {
	// Depth is the most levels per side; 0 returns the full book.
	Depth uint32
	// IncludeOrders lists each level's orders in queue-priority order.
	IncludeOrders bool
}

// Book is one book as of its most recent F_LAST boundary.
type Book struct {
	// Snapshot is the book; prices are in units of 1e-9 (see FormatPrice).
	Snapshot *v1.BookSnapshot
	// Epoch is the server run Snapshot.ReplaySequence belongs to.
	Epoch string
}

// GetBook is one instrument's book, selected by ID or Symbol (with OnPublisher for an instrument
// on several publishers). An unknown instrument fails with ErrInstrumentNotFound.
func (c *Client) GetBook(ctx context.Context, instrument Instrument, opts BookOptions) (*Book, error) {
	req := &v1.GetBookRequest{PublisherId: instrument.publisher, Depth: opts.Depth, IncludeOrders: opts.IncludeOrders}
	switch {
	case instrument.bySymbol:
		req.Instrument = &v1.GetBookRequest_Symbol{Symbol: instrument.symbol}
	case instrument.byID:
		req.Instrument = &v1.GetBookRequest_InstrumentId{InstrumentId: instrument.id}
	}
	ctx, cancel := c.unaryContext(ctx)
	defer cancel()
	resp, err := c.market.GetBook(ctx, req)
	if err != nil {
		return nil, errorFromStatus("GetBook", err)
	}
	return &Book{Snapshot: resp.GetBook(), Epoch: resp.GetEpoch()}, nil
}
