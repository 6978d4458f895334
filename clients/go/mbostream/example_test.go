package mbostream_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	v1 "github.com/mbostream/mbostream/clients/go/gen/mbostream/v1"
	"github.com/mbostream/mbostream/clients/go/mbostream"
)

// Dial a server and print the best bid and offer of one book.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err := mbostream.Dial(ctx, "127.0.0.1:50051")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	book, err := client.GetBook(ctx, mbostream.Symbol("ESZ6"), mbostream.BookOptions{Depth: 5})
	if errors.Is(err, mbostream.ErrInstrumentNotFound) {
		log.Fatal("the replay has not seen ESZ6 (yet)")
	} else if err != nil {
		log.Fatal(err)
	}
	bbo := book.Snapshot.GetBbo()
	fmt.Printf("%s  bid %s x %d  ask %s x %d\n", book.Snapshot.GetSymbol(),
		mbostream.FormatPrice(bbo.GetBidPrice()), bbo.GetBidSize(),
		mbostream.FormatPrice(bbo.GetAskPrice()), bbo.GetAskSize())
}

// Dial a remote server over TLS with the operator token, a keepalive that notices a dead link
// within 20 s, and room for full books larger than the default 64 MiB message limit.
func ExampleDial() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err := mbostream.Dial(ctx, "mbostream.example.com:443",
		mbostream.WithTLS(&tls.Config{MinVersion: tls.VersionTLS13}),
		mbostream.WithBearerToken(os.Getenv("MBOSTREAM_CONTROL_TOKEN")),
		mbostream.WithKeepalive(15*time.Second, 5*time.Second),
		mbostream.WithMaxMessageSize(128<<20),
	)
	var cfg *mbostream.ConfigError
	switch {
	case errors.As(err, &cfg):
		log.Fatalf("bad option %s: %s", cfg.Setting, cfg.Reason)
	case errors.Is(err, mbostream.ErrUnavailable):
		log.Fatal("server not reachable: ", err)
	case err != nil:
		log.Fatal(err)
	}
	defer client.Close()
	fmt.Println("connected to", client.Target())
}

// List every book the replay has seen, then read each one by instrument id on its publisher.
func ExampleClient_ListInstruments() {
	ctx := context.Background()
	client, err := mbostream.Dial(ctx, "127.0.0.1:50051")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	infos, err := client.ListInstruments(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, info := range infos {
		book, err := client.GetBook(ctx, mbostream.ID(info.GetInstrumentId()).OnPublisher(info.GetPublisherId()),
			mbostream.BookOptions{Depth: 5})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(info.GetSymbol(), len(book.Snapshot.GetBids()), "bid levels,", len(book.Snapshot.GetAsks()), "ask levels")
	}
}

// Follow every MBO record from a snapshot on, across reconnections; rebuild local state whenever
// the stream says it started over.
func ExampleClient_StreamEvents() {
	ctx := context.Background()
	client, err := mbostream.Dial(ctx, "127.0.0.1:50051")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	orders := map[uint64]uint32{} // order id → resting size, say
	stream := client.StreamEvents(ctx, mbostream.EventsRequest{WithSnapshot: true})
	defer stream.Close()
	for stream.Next() {
		batch := stream.Batch()
		if batch.NewSnapshot {
			if batch.ResetCause != nil {
				log.Printf("starting over: %v", batch.ResetCause)
			}
			clear(orders)
		}
		for i := range batch.Len() {
			switch batch.Action[i] {
			case mbostream.ActionAdd:
				orders[batch.OrderID[i]] = batch.Size[i]
			case mbostream.ActionCancel, mbostream.ActionFill:
				delete(orders, batch.OrderID[i])
			}
		}
	}
	if err := stream.Err(); err != nil {
		log.Fatal(err)
	}
}

// Watch two books, ten levels deep, at most twice a second each.
func ExampleClient_StreamBook() {
	ctx := context.Background()
	client, err := mbostream.Dial(ctx, "127.0.0.1:50051")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	stream := client.StreamBook(ctx, mbostream.BookStreamRequest{
		Instruments:         []mbostream.Instrument{mbostream.Symbol("ESZ6"), mbostream.Symbol("NQZ6")},
		Depth:               10,
		MaxUpdatesPerSecond: 2,
	})
	for update, err := range stream.All() {
		if err != nil {
			log.Fatal(err)
		}
		for _, book := range update.Books {
			latency := time.Duration(time.Now().UnixNano() - int64(update.TsOut))
			fmt.Println(book.GetSymbol(), len(book.GetBids()), "bid levels", latency, "after publication")
		}
	}
}

// Every book of the server, each message decoded into the same memory: what outlives the loop's
// turn is copied out of the update first (here a price, or proto.Clone of a book).
func ExampleBookStreamRequest_reuseUpdates() {
	ctx := context.Background()
	client, err := mbostream.Dial(ctx, "127.0.0.1:50051")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	bestBid := map[uint32]int64{}
	stream := client.StreamBook(ctx, mbostream.BookStreamRequest{Depth: 10, ReuseUpdates: true})
	for update, err := range stream.All() {
		if err != nil {
			log.Fatal(err)
		}
		for _, book := range update.Books { // valid until the next turn of the loop
			bestBid[book.GetInstrumentId()] = book.GetBbo().GetBidPrice()
		}
	}
}

// Redraw every book, ten levels deep, as fast as a slow screen allows: the stream is read on a
// goroutine of its own, so each redraw shows the newest books however long the last one took.
func ExampleClient_LatestBooks() {
	ctx := context.Background()
	client, err := mbostream.Dial(ctx, "127.0.0.1:50051")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	latest := client.LatestBooks(ctx, mbostream.BookStreamRequest{Depth: 10})
	defer latest.Close()
	screen := map[mbostream.BookKey]mbostream.LatestBook{}
	var epoch string
	for {
		changed, err := latest.Wait(ctx) // the books that changed since the last redraw
		if err != nil {
			log.Fatal(err)
		}
		for key, b := range changed {
			if b.Epoch != epoch { // the server restarted: the old run's books are gone
				clear(screen)
				epoch = b.Epoch
			}
			screen[key] = b
		}
		for _, b := range screen {
			age := time.Duration(time.Now().UnixNano() - int64(b.TsOut))
			fmt.Println(b.Book.GetSymbol(), mbostream.FormatPrice(b.Book.GetBbo().GetBidPrice()), age, "old")
		}
		time.Sleep(250 * time.Millisecond) // a slow screen
	}
}

// The ReplayService through the generated client, with the operator token.
func ExampleClient_Conn() {
	ctx := context.Background()
	client, err := mbostream.Dial(ctx, "127.0.0.1:50051", mbostream.WithBearerToken("change-me-please"))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	reply, err := v1.NewReplayServiceClient(client.Conn()).Pause(ctx, &v1.PauseRequest{})
	if err := mbostream.ErrorFromStatus("Pause", err); errors.Is(err, mbostream.ErrUnauthenticated) {
		log.Fatal("wrong operator token")
	} else if err != nil {
		log.Fatal(err)
	}
	fmt.Println(reply.GetStatus().GetState(), "at replay position", reply.GetStatus().GetReplaySequence())
}

func ExampleFormatPrice() {
	fmt.Println(mbostream.FormatPrice(65_400_000_000))
	fmt.Println(mbostream.FormatPrice(-250_000_000))
	price, _ := mbostream.ParsePrice("4512.25")
	fmt.Println(price)
	// Output:
	// 65.400000000
	// -0.250000000
	// 4512250000000
}

func ExampleFlags() {
	flags := mbostream.FlagLast | mbostream.FlagSnapshot
	fmt.Println(flags, flags.Has(mbostream.FlagLast))
	// Output: LAST|SNAPSHOT true
}
