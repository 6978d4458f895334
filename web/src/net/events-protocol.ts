// Messages between the page and the trade-tape worker (events-worker.ts).

import type { TapeTrade } from "../model/trades";

/** Page → worker: (re)subscribe; a new subscription replaces the previous one. */
export interface EventsCommand {
  /** Echoed in every report of this subscription, so the page can drop a replaced one's last reports. */
  readonly id: number;
  readonly baseUrl: string;
  readonly instrumentId: number;
  readonly publisherId: number;
}

/** Worker → page. */
export type EventsReport =
  | { readonly kind: "trades"; readonly id: number; readonly trades: TapeTrade[]; readonly records: number }
  | { readonly kind: "error"; readonly id: number; readonly message: string; readonly connectionLoss: boolean };
