// Package mbostream is the Go client of the mbostream gRPC API: order books rebuilt from a
// replayed Databento MBO feed, and the raw MBO records themselves.
//
// Dial connects; a Client has the MarketDataService calls:
//
//   - ListInstruments: every book the replay has seen so far.
//   - GetBook: one consistent book, by ID or Symbol.
//   - StreamBook: conflated top-N books, a snapshot first and then the latest at each change.
//   - StreamEvents: every MBO record in replay order, in column-wise EventBatches.
//
// Streams are readers (Next, then Batch or Update, then Err; or range over All) that reconnect
// with exponential backoff and full jitter. StreamEvents resumes after the last record it handed
// out (start_after_sequence, in the same server epoch), so a resumed stream has no gap and no
// duplicate; when the server cannot resume it — the position is no longer buffered, or the server
// restarted and runs another epoch — the stream starts over from a fresh snapshot and marks it
// (EventBatch.NewSnapshot and ResetCause), so state built from earlier batches is dropped rather
// than mixed with another run's. EventStream.Stats counts every reconnection, resume, rebuild,
// gap and duplicate.
//
// A StreamBook reader that falls behind reads old books first: HTTP/2 flow control lets the
// server send a whole receive window of them ahead of the reading (4 MiB a stream by default: a
// reader of whole L3 books that stops for 3 s then reads books 3 s old), and the server
// conflates only what does not fit. LatestBooks reads
// the stream on a goroutine of its own, as fast as the server sends, and keeps only the newest
// version of each book for Take, Wait or Get: for a reader that may fall behind and only wants
// the newest books (a market-making screen, a signal model that samples). The age of what it
// takes is then bounded by the goroutine's decoding speed rather than by its own reading speed;
// the cost is that every message is decoded, whether or not its books are ever taken.
//
// Prices are int64 in units of 1e-9 from the wire to the caller; FormatPrice and ParsePrice
// convert at the edges. Errors are typed; see ErrInvalidRequest for the tree.
//
// The generated protobuf and gRPC code is in package
// github.com/mbostream/mbostream/clients/go/gen/mbostream/v1; use it with Client.Conn, e.g. for
// the ReplayService.
package mbostream
