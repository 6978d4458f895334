package mbostream

// Latest books room: a BookStream read ahead on a goroutine of its own, keeping only the newest
// version of each book, so that what a slow reader takes is as fresh as the goroutine's decoding
// allows rather than as old as HTTP/2's receive windows hold.

import (
	"context"
	"maps"
	"sync"

	v1 "github.com/mbostream/mbostream/clients/go/gen/mbostream/v1"
)

// BookKey names one book: an instrument of one publisher.
type BookKey struct {
	InstrumentID uint32
	PublisherID  uint32
}

// BookKeyOf is the key of book.
func BookKeyOf(book *v1.BookSnapshot) BookKey {
	return BookKey{InstrumentID: book.GetInstrumentId(), PublisherID: book.GetPublisherId()}
}

// LatestBook is the newest version of one book that a LatestBooks holds.
type LatestBook struct {
	// Book is shared by every caller handed it and never changed by LatestBooks: read it, do not
	// modify it (proto.Clone it first).
	Book *v1.BookSnapshot
	// TsOut is the server's publication time of the message that carried Book, ns since the UNIX
	// epoch (with CombineBooks, that of the message's oldest book: an upper bound of Book's age).
	TsOut uint64
	// Epoch is the server run Book.ReplaySequence belongs to.
	Epoch string
}

// LatestBooksStats is what a LatestBooks went through since it started.
type LatestBooksStats struct {
	// Stream is the underlying BookStream's: connections, epoch changes, messages.
	Stream BookStreamStats
	// Books counts the book versions received.
	Books uint64
	// Superseded counts the versions a newer one replaced before Take handed them out: conflated
	// here, in the client. Versions dropped at an epoch change are not counted.
	Superseded uint64
	// ServerConflated is the sum of the messages' Conflated: book states the server skipped.
	ServerConflated uint64
}

// LatestBooks reads a StreamBook subscription on a goroutine of its own as fast as the server
// sends, and keeps only the newest version of each book; take them with Take, Wait or Changed,
// or read single books with Get and All. Every method may be called from any goroutine.
//
// It trades CPU for freshness: every message is decoded, whether or not anything takes its books.
type LatestBooks struct {
	stream  *BookStream
	changed chan struct{}
	done    chan struct{}

	mu      sync.Mutex
	books   map[BookKey]LatestBook
	pending map[BookKey]LatestBook // changed since the last Take
	epoch   string
	stats   LatestBooksStats
	err     error
}

// LatestBooks starts reading a book stream on a goroutine of its own, with the reconnections of
// StreamBook (req.Backoff, req.NoReconnect); req.ReuseUpdates is ignored, since the books are
// kept. The goroutine ends when ctx ends, Close is called, or the stream ends with an error (Done,
// Err).
func (c *Client) LatestBooks(ctx context.Context, req BookStreamRequest) *LatestBooks {
	req.ReuseUpdates = false
	l := &LatestBooks{
		stream:  c.StreamBook(ctx, req),
		changed: make(chan struct{}, 1),
		done:    make(chan struct{}),
		books:   map[BookKey]LatestBook{},
	}
	go l.read()
	return l
}

func (l *LatestBooks) read() {
	defer close(l.done)
	for l.stream.Next() {
		l.store(l.stream.Update())
	}
	l.mu.Lock()
	l.err = l.stream.Err()
	l.mu.Unlock()
}

// store keeps u's books as the newest of their keys. Books of another epoch than u's belong to
// another server run, whose replay positions are unrelated and whose books may never come again:
// they are dropped first.
func (l *LatestBooks) store(u *BookUpdate) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if u.Epoch != "" && l.epoch != "" && u.Epoch != l.epoch {
		clear(l.books)
		l.pending = nil
	}
	if u.Epoch != "" {
		l.epoch = u.Epoch
	}
	if l.pending == nil {
		l.pending = map[BookKey]LatestBook{}
	}
	for _, book := range u.Books {
		key, latest := BookKeyOf(book), LatestBook{Book: book, TsOut: u.TsOut, Epoch: u.Epoch}
		if _, ok := l.pending[key]; ok {
			l.stats.Superseded++
		}
		l.books[key], l.pending[key] = latest, latest
	}
	l.stats.Books += uint64(len(u.Books))
	l.stats.ServerConflated += u.Conflated
	if len(l.pending) > 0 {
		select {
		case l.changed <- struct{}{}:
		default: // already signalled, not yet taken
		}
	}
}

// Get is the newest version of one book, and whether it is held.
func (l *LatestBooks) Get(key BookKey) (LatestBook, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.books[key]
	return b, ok
}

// All is a copy of every book held, each at its newest version; it does not count as a Take.
func (l *LatestBooks) All() map[BookKey]LatestBook {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.books)
}

// Take is the books that changed since the previous Take, each at its newest version (nil when
// none did). Books whose Epoch differs from those taken before come from a restarted server: the
// earlier ones were dropped, and drop what you kept of them too.
func (l *LatestBooks) Take() map[BookKey]LatestBook {
	l.mu.Lock()
	defer l.mu.Unlock()
	taken := l.pending
	l.pending = nil
	// What Changed signalled is taken now.
	select {
	case <-l.changed:
	default:
	}
	if len(taken) == 0 {
		return nil
	}
	return taken
}

// Changed receives when a book changed since the last Take (a channel of capacity 1: several
// changes are one receive), for a select loop that then calls Take.
func (l *LatestBooks) Changed() <-chan struct{} { return l.changed }

// Wait blocks until a book changed, then returns Take; once the stream ended and every change was
// taken, it returns nil books and Err (nil after Close). When ctx ends first it returns ctx's
// error.
func (l *LatestBooks) Wait(ctx context.Context) (map[BookKey]LatestBook, error) {
	for {
		if taken := l.Take(); taken != nil {
			return taken, nil
		}
		select {
		case <-l.changed:
		case <-l.done:
			// The last books stored may have come after the Take above.
			if taken := l.Take(); taken != nil {
				return taken, nil
			}
			return nil, l.Err()
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

// Done is closed when the reading goroutine has ended.
func (l *LatestBooks) Done() <-chan struct{} { return l.done }

// Err is why the reading ended, once Done is closed: nil after Close, the context's error when
// ctx ended, otherwise the error the stream could not recover from.
func (l *LatestBooks) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Close ends the stream and waits for the reading goroutine to end; the books held stay readable.
func (l *LatestBooks) Close() {
	l.stream.Close()
	<-l.done
}

// Stats is a copy of the counters.
func (l *LatestBooks) Stats() LatestBooksStats {
	l.mu.Lock()
	stats := l.stats
	l.mu.Unlock()
	stats.Stream = l.stream.Stats()
	return stats
}
