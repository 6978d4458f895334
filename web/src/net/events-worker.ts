// The trade-tape feed, off the main thread: a dedicated worker reads the
// instrument's raw MBO stream (StreamEvents, tens of thousands of records a
// second at full replay speed), picks out the trades, and posts them to the
// page at most every FLUSH_MS, so decoding never delays a frame.

import { create } from "@bufbuild/protobuf";
import { createApi, describeError, isCancel, isConnectionLoss } from "../api";
import { InstrumentSelectorSchema, StreamEventsRequestSchema } from "../gen/mbostream/v1/market_data_pb";
import { type TapeTrade, tradesFrom } from "../model/trades";
import { runResilient } from "./resilient";
import type { EventsCommand, EventsReport } from "./events-protocol";

const FLUSH_MS = 50;
/** Trades kept between flushes; the tape shows fewer, so older ones are dropped here already. */
const MAX_PENDING_TRADES = 200;

const scope = self as unknown as {
  onmessage: ((event: MessageEvent<EventsCommand>) => void) | null;
  postMessage(report: EventsReport): void;
};

let subscription: AbortController | undefined;
let subscriptionId = 0;
let pending: TapeTrade[] = [];
let pendingRecords = 0;
let flushTimer: ReturnType<typeof setTimeout> | undefined;

function flush(): void {
  flushTimer = undefined;
  if (pending.length === 0 && pendingRecords === 0) return;
  scope.postMessage({ kind: "trades", id: subscriptionId, trades: pending, records: pendingRecords });
  pending = [];
  pendingRecords = 0;
}

function subscribe(command: EventsCommand): void {
  subscription?.abort();
  const stream = new AbortController();
  subscription = stream;
  subscriptionId = command.id;
  const id = command.id;
  pending = [];
  pendingRecords = 0;
  const api = createApi(command.baseUrl);
  const selector = create(InstrumentSelectorSchema, {
    selector: { case: "instrumentId", value: command.instrumentId },
    publisherId: command.publisherId,
  });
  void runResilient({
    open: (signal) => api.market.streamEvents(create(StreamEventsRequestSchema, { instruments: [selector] }), { signal }),
    onMessage: (batch) => {
      if (stream.signal.aborted) return;
      pendingRecords += batch.action.length;
      const trades = tradesFrom(batch);
      if (trades.length) pending = pending.concat(trades).slice(-MAX_PENDING_TRADES);
      flushTimer ??= setTimeout(flush, FLUSH_MS);
    },
    // The book stream's state is the page's connection state; the tape only reports errors.
    onState: () => undefined,
    onError: (error) => {
      if (isCancel(error)) return;
      scope.postMessage({ kind: "error", id, message: describeError(error), connectionLoss: isConnectionLoss(error) });
    },
    signal: stream.signal,
  });
}

scope.onmessage = (event) => subscribe(event.data);
