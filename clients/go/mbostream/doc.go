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
// Prices are int64 in units of 1e-9 from the wire to the caller; FormatPrice and ParsePrice
// convert at the edges. Errors are typed; see ErrInvalidRequest for the tree.
//
// The generated protobuf and gRPC code is in package
// github.com/mbostream/mbostream/clients/go/gen/mbostream/v1; use it with Client.Conn, e.g. for
// the ReplayService.
package mbostream
