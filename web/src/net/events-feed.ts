// The page's side of the trade-tape worker: subscribe to one instrument's
// trades, receive them in batches.

import type { EventsCommand, EventsReport } from "./events-protocol";

export interface EventsFeedHandlers {
  /** Trades oldest first, and how many MBO records (of any action) arrived with them. */
  readonly onTrades: (trades: EventsReport & { kind: "trades" }) => void;
  readonly onError: (message: string, connectionLoss: boolean) => void;
}

export class EventsFeed {
  private readonly worker: Worker;
  private subscription = 0;

  constructor(
    private readonly baseUrl: string,
    handlers: EventsFeedHandlers,
  ) {
    this.worker = new Worker(new URL("./events-worker.ts", import.meta.url), { type: "module", name: "trade-tape" });
    this.worker.onmessage = (event: MessageEvent<EventsReport>) => {
      const report = event.data;
      if (report.id !== this.subscription) return; // from a subscription already replaced
      if (report.kind === "trades") handlers.onTrades(report);
      else handlers.onError(report.message, report.connectionLoss);
    };
    this.worker.onerror = (event) => handlers.onError(`trade worker failed: ${event.message}`, false);
  }

  subscribe(instrumentId: number, publisherId: number): void {
    this.subscription += 1;
    this.send({ id: this.subscription, baseUrl: this.baseUrl, instrumentId, publisherId });
  }

  private send(command: EventsCommand): void {
    this.worker.postMessage(command);
  }
}
