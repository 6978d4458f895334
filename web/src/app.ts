// The application: owns the streams and the state, and renders it in
// animation frames. Network callbacks only store the newest data and ask for
// a frame; every DOM write happens in `render`, at most once per frame, so a
// burst of updates costs one repaint.

import { create } from "@bufbuild/protobuf";
import type { BookSnapshot } from "./gen/mbostream/v1/book_pb";
import {
  type InstrumentInfo,
  type InstrumentSelector,
  InstrumentSelectorSchema,
  StreamBookRequestSchema,
  type StreamBookResponse,
} from "./gen/mbostream/v1/market_data_pb";
import type { ReplayStatus } from "./gen/mbostream/v1/replay_pb";
import { type Api, Code, describeError, errorCode, isCancel, isConnectionLoss, withToken } from "./api";
import { takeLaunchToken } from "./launch-token";
import { formatClock, formatDate, formatMs, formatRate } from "./model/format";
import { buildLadder, buildQueue, findLevel, type Ladder } from "./model/ladder";
import { formatPrice, formatQuantity } from "./model/price";
import { EpochWatch } from "./model/epoch";
import { PriceSeries } from "./model/series";
import { latencyMs, nowNs, Percentiles, RateMeter } from "./model/stats";
import { Tape } from "./model/trades";
import { EventsFeed } from "./net/events-feed";
import { isLoss, type LinkState, runResilient } from "./net/resilient";
import { ChartView } from "./ui/chart-view";
import { h } from "./ui/dom";
import { HeaderView } from "./ui/header-view";
import { instrumentKey, InstrumentsView } from "./ui/instruments-view";
import { LadderView, type LevelSelection } from "./ui/ladder-view";
import { OperatorView } from "./ui/operator-view";
import { QueueView } from "./ui/queue-view";
import { TapeView } from "./ui/tape-view";
import { Toasts } from "./ui/toasts";

export interface AppOptions {
  /** Where the API is: the page's own origin behind Envoy. */
  readonly baseUrl: string;
  /** Levels per side on the ladder (and requested from the server). */
  readonly depth: number;
  /** Book updates per second asked of the server; the display cannot show more than its refresh rate. */
  readonly maxUpdatesPerSecond: number;
  readonly tapeRows: number;
  readonly chartPoints: number;
}

const INSTRUMENTS_POLL_MS = 2000;
const STATUS_POLL_MS = 1000;
const HEADER_REFRESH_MS = 250;
const QUEUE_UPDATES_PER_SECOND = 4;
const UNARY_TIMEOUT_MS = 5000;

interface Operator {
  token: string;
  status: ReplayStatus | undefined;
  message: string;
  failed: boolean;
  busy: boolean;
  poll: number | undefined;
}

export class App {
  private readonly header = new HeaderView();
  private readonly instrumentsView: InstrumentsView;
  private readonly ladderView: LadderView;
  private readonly queueView: QueueView;
  private readonly tapeView: TapeView;
  private readonly chartView = new ChartView();
  private readonly operatorView: OperatorView;
  private readonly toasts = new Toasts();
  private readonly events: EventsFeed;

  private instruments: InstrumentInfo[] = [];
  private instrumentsLoaded = false;
  private instrumentsChanged = true;
  private selected: InstrumentInfo | undefined;
  private selection: AbortController | undefined;

  private book: BookSnapshot | undefined;
  private ladder: Ladder | undefined;
  private bookChanged = false;
  private bookLink: LinkState | undefined;
  private bookLosses = 0;
  private readonly tape: Tape;
  private tapeChanged = false;
  private readonly series: PriceSeries;
  private seriesChanged = false;

  private queueSelection: LevelSelection | undefined;
  private queueBook: BookSnapshot | undefined;
  private queueStream: AbortController | undefined;
  private queueChanged = true;

  private readonly operator: Operator = { token: "", status: undefined, message: "", failed: false, busy: false, poll: undefined };
  private operatorChanged = true;

  private readonly bookReceived = new RateMeter();
  private readonly bookShown = new RateMeter();
  private readonly feedRate = new RateMeter();
  private readonly eventsReceived = new RateMeter();
  private readonly latency = new Percentiles();
  private readonly renderCost = new Percentiles(600);
  private lastReplaySequence: bigint | undefined;
  private readonly epoch = new EpochWatch();

  private frameRequested = false;
  private lastHeaderMs = 0;

  constructor(
    root: HTMLElement,
    private readonly api: Api,
    private readonly options: AppOptions,
  ) {
    this.tape = new Tape(options.tapeRows);
    this.series = new PriceSeries(options.chartPoints);
    this.instrumentsView = new InstrumentsView((key) => this.select(key));
    this.ladderView = new LadderView(options.depth, (selection) => this.openQueue(selection));
    this.queueView = new QueueView(() => this.openQueue(undefined));
    this.tapeView = new TapeView(options.tapeRows);
    this.events = new EventsFeed(options.baseUrl, {
      onTrades: ({ trades, records }) => {
        this.eventsReceived.add(records, performance.now());
        if (trades.length === 0) return;
        this.tape.push(trades);
        this.tapeChanged = true;
        this.requestFrame();
      },
      onError: (message, connectionLoss) => this.toasts.show("error", `${connectionLoss ? "Connection" : "Trade stream"}: ${message}`),
    });
    this.operatorView = new OperatorView({
      setToken: (token) => this.setToken(token),
      pause: () => void this.operate("Pause", (o) => this.api.replay.pause({}, o)),
      resume: () => void this.operate("Resume", (o) => this.api.replay.resume({}, o)),
      restart: () => void this.operate("Restart", (o) => this.api.replay.restart({}, o)),
      setRate: (rate) =>
        void this.operate(`Rate ${formatRate(rate)}/s`, (o) =>
          this.api.replay.setRate({ pacing: { case: "recordsPerSecond", value: rate } }, o),
        ),
      setMax: () => void this.operate("Max speed", (o) => this.api.replay.setRate({ pacing: { case: "max", value: true } }, o)),
    });
    root.replaceChildren(
      this.header.element,
      h(
        "main",
        { class: "layout" },
        h("aside", { class: "side" }, this.instrumentsView.element, this.operatorView.element),
        h("section", { class: "panel ladder-panel" }, h("header", {}, h("h2", { text: "Depth" })), this.ladderView.element),
        h("div", { class: "right" }, this.chartView.element, h("div", { class: "lower" }, this.tapeView.element, this.queueView.element)),
      ),
      this.toasts.element,
    );
  }

  /**
   * Takes the operator token `mbostream run` put in the URL, if any, and starts polling the
   * instrument list; the first instrument (or the one in the URL) is selected.
   */
  start(): void {
    this.takeTokenFromUrl();
    void this.pollInstruments();
    window.setInterval(() => void this.pollInstruments(), INSTRUMENTS_POLL_MS);
    // The header's clocks (rates, reconnect countdown) move even when no data does.
    window.setInterval(() => this.requestFrame(), HEADER_REFRESH_MS);
    window.addEventListener("hashchange", () => {
      this.takeTokenFromUrl();
      this.selectFromHash();
    });
    this.requestFrame();
  }

  /** The operator token handed over in the URL (`#token=…`): out of the address bar, into memory. */
  private takeTokenFromUrl(): void {
    const token = takeLaunchToken(window.location, window.history);
    if (token) this.setToken(token, "Token taken from the launch URL.");
  }

  private async pollInstruments(): Promise<void> {
    try {
      const reply = await this.api.market.listInstruments({}, { timeoutMs: UNARY_TIMEOUT_MS });
      this.instruments = reply.instruments;
      this.instrumentsLoaded = true;
      this.instrumentsChanged = true;
      const selected = this.selected;
      if (selected) {
        const key = instrumentKey(selected);
        this.selected = this.instruments.find((i) => instrumentKey(i) === key) ?? selected;
      } else if (!this.selectFromHash()) {
        const first = this.instruments[0];
        if (first) this.select(instrumentKey(first));
      }
    } catch (error) {
      // The book stream reports lost connections; without one, this is the only voice.
      if (!this.selected) this.toasts.show("error", `Instruments: ${describeError(error)}`);
    }
    this.requestFrame();
  }

  /** Selects the instrument named by the URL hash (#CLX5 or #instrument:publisher); false if none matches. */
  private selectFromHash(): boolean {
    const wanted = decodeURIComponent(window.location.hash.slice(1));
    const match = wanted && this.instruments.find((i) => i.symbol === wanted || instrumentKey(i) === wanted);
    if (match && (!this.selected || instrumentKey(match) !== instrumentKey(this.selected))) this.select(instrumentKey(match));
    return Boolean(match);
  }

  private select(key: string): void {
    const info = this.instruments.find((i) => instrumentKey(i) === key);
    if (!info) return;
    this.selection?.abort();
    this.openQueue(undefined);
    this.selected = info;
    this.book = undefined;
    this.ladder = undefined;
    this.bookChanged = true;
    this.tape.clear();
    this.tapeChanged = true;
    this.series.clear();
    this.seriesChanged = true;
    this.instrumentsChanged = true;
    this.lastReplaySequence = undefined;
    this.bookLink = undefined;
    this.bookLosses = 0;
    this.epoch.reset();
    for (const meter of [this.bookReceived, this.bookShown, this.feedRate, this.eventsReceived]) meter.reset();
    this.latency.reset();
    history.replaceState(null, "", `#${encodeURIComponent(info.symbol || key)}`);
    const selection = new AbortController();
    this.selection = selection;
    const selector = selectorOf(info);
    void runResilient<StreamBookResponse>({
      open: (signal) =>
        this.api.market.streamBook(
          create(StreamBookRequestSchema, {
            instruments: [selector],
            depth: this.options.depth,
            maxUpdatesPerSecond: this.options.maxUpdatesPerSecond,
          }),
          { signal },
        ),
      onMessage: (reply) => this.onBook(reply),
      onState: (state) => {
        // A stream of an earlier selection reports its stop after the new one started.
        if (this.selection !== selection) return;
        if (isLoss(this.bookLink, state)) this.bookLosses += 1;
        this.bookLink = state;
        this.requestFrame();
      },
      onError: (error) => this.streamFailed("Book stream", error),
      signal: selection.signal,
    });
    this.events.subscribe(info.instrumentId, info.publisherId);
  }

  /** One toast per distinct failure: a lost connection, seen by every stream at once, shows once. */
  private streamFailed(what: string, error: unknown): void {
    if (isCancel(error)) return;
    this.toasts.show("error", `${isConnectionLoss(error) ? "Connection" : what}: ${describeError(error)}`);
  }

  private onBook(reply: StreamBookResponse): void {
    const book = reply.book;
    if (!book) return;
    const nowMs = performance.now();
    this.latency.record(latencyMs(reply.tsOut, nowNs()));
    this.bookReceived.add(1, nowMs);
    if (this.epoch.changed(reply.epoch)) {
      // The server restarted: its replay positions and trades are another run's. Start over.
      this.tape.clear();
      this.tapeChanged = true;
      this.series.clear();
      this.lastReplaySequence = undefined;
      this.toasts.show("info", "The server restarted (a new run): the chart and the trade tape start over.");
    }
    if (reply.isSnapshot) this.lastReplaySequence = undefined;
    if (this.lastReplaySequence !== undefined && book.replaySequence > this.lastReplaySequence) {
      // replay_sequence numbers every record the server replays: its pace is the feed's.
      this.feedRate.add(Number(book.replaySequence - this.lastReplaySequence), nowMs);
    }
    this.lastReplaySequence = book.replaySequence;
    this.book = book;
    this.bookChanged = true;
    const bbo = book.bbo;
    const mid = bbo?.hasBid && bbo.hasAsk ? (bbo.bidPrice + bbo.askPrice) / 2n : undefined;
    this.series.push({ ts: book.tsRecv, mid, last: book.lastTrade?.price });
    this.seriesChanged = true;
    this.requestFrame();
  }

  private openQueue(selection: LevelSelection | undefined): void {
    this.queueStream?.abort();
    this.queueStream = undefined;
    this.queueSelection = selection;
    this.queueBook = undefined;
    this.queueChanged = true;
    this.bookChanged = true; // the ladder marks the selected row
    this.requestFrame();
    const info = this.selected;
    if (!selection || !info) return;
    const stream = new AbortController();
    this.queueStream = stream;
    void runResilient<StreamBookResponse>({
      open: (signal) =>
        this.api.market.streamBook(
          create(StreamBookRequestSchema, {
            instruments: [selectorOf(info)],
            depth: this.options.depth,
            maxUpdatesPerSecond: QUEUE_UPDATES_PER_SECOND,
            includeOrders: true,
          }),
          { signal },
        ),
      onMessage: (reply) => {
        this.queueBook = reply.book;
        this.queueChanged = true;
        this.requestFrame();
      },
      onState: () => undefined,
      onError: (error) => this.streamFailed("Queue stream", error),
      signal: stream.signal,
    });
  }

  private setToken(token: string, message = token ? "Token set." : "Token forgotten."): void {
    const operator = this.operator;
    operator.token = token;
    window.clearInterval(operator.poll);
    operator.poll = undefined;
    operator.status = undefined;
    operator.failed = false;
    operator.message = message;
    if (token) {
      void this.pollStatus();
      operator.poll = window.setInterval(() => void this.pollStatus(), STATUS_POLL_MS);
    }
    this.operatorChanged = true;
    this.requestFrame();
  }

  private async pollStatus(): Promise<void> {
    const operator = this.operator;
    try {
      const reply = await this.api.replay.getStatus({}, { ...withToken(operator.token), timeoutMs: UNARY_TIMEOUT_MS });
      operator.status = reply.status;
    } catch (error) {
      if (errorCode(error) === Code.Unauthenticated || errorCode(error) === Code.PermissionDenied) {
        window.clearInterval(operator.poll);
        operator.poll = undefined;
        operator.failed = true;
        operator.message = `Token rejected: ${describeError(error)}`;
        this.toasts.show("error", operator.message);
      }
    }
    this.operatorChanged = true;
    this.requestFrame();
  }

  private async operate(
    name: string,
    call: (options: { headers: Record<string, string>; timeoutMs: number }) => Promise<{ status?: ReplayStatus | undefined }>,
  ): Promise<void> {
    const operator = this.operator;
    operator.busy = true;
    this.operatorChanged = true;
    this.requestFrame();
    try {
      const reply = await call({ ...withToken(operator.token), timeoutMs: UNARY_TIMEOUT_MS });
      operator.status = reply.status ?? operator.status;
      operator.failed = false;
      operator.message = `${name}: done.`;
    } catch (error) {
      operator.failed = true;
      const hint = errorCode(error) === Code.Unauthenticated && !operator.token ? " Enter the operator token first." : "";
      operator.message = `${name} failed: ${describeError(error)}.${hint}`;
      this.toasts.show("error", operator.message);
    } finally {
      operator.busy = false;
      this.operatorChanged = true;
      this.requestFrame();
    }
  }

  private requestFrame(): void {
    if (this.frameRequested) return;
    this.frameRequested = true;
    requestAnimationFrame(() => {
      this.frameRequested = false;
      this.render();
    });
  }

  private render(): void {
    const started = performance.now();
    const book = this.book;
    if (this.bookChanged) {
      this.bookChanged = false;
      this.ladder = book ? buildLadder(book, this.options.depth) : undefined;
      this.ladderView.update(this.ladder, this.queueSelection, book?.crossedSinceTs ? formatClock(book.crossedSinceTs) : "");
      this.tagLadder(book);
      if (book) this.bookShown.add(1, started);
    }
    const decimals = this.ladder?.decimals ?? 2;
    this.chartView.draw(this.series, decimals, this.ladder?.tick, this.seriesChanged);
    this.seriesChanged = false;
    if (this.tapeChanged) {
      this.tapeChanged = false;
      this.tapeView.update(this.tape.trades, decimals);
    }
    if (this.queueChanged) {
      this.queueChanged = false;
      this.renderQueue(decimals);
    }
    if (started - this.lastHeaderMs >= HEADER_REFRESH_MS) {
      this.lastHeaderMs = started;
      this.renderHeader(started);
    }
    if (this.instrumentsChanged) {
      this.instrumentsChanged = false;
      this.instrumentsView.update(this.instruments, this.selected && instrumentKey(this.selected), this.instrumentsLoaded);
    }
    if (this.operatorChanged) {
      this.operatorChanged = false;
      const { token, status, message, failed, busy } = this.operator;
      this.operatorView.update({ hasToken: Boolean(token), status, message, failed, busy });
    }
    this.renderCost.record(performance.now() - started);
  }

  /** Exposes the rendered book's identity as data attributes: what a reader (or a test) compares with GetBook. */
  private tagLadder(book: BookSnapshot | undefined): void {
    const element = this.ladderView.element;
    element.dataset.instrumentId = book ? String(book.instrumentId) : "";
    element.dataset.publisherId = book ? String(book.publisherId) : "";
    element.dataset.sequence = book ? String(book.sequence) : "";
    element.dataset.replaySequence = book ? book.replaySequence.toString() : "";
    element.dataset.state = this.ladder?.state ?? "empty";
  }

  private renderQueue(decimals: number): void {
    const selection = this.queueSelection;
    if (!selection) return this.queueView.update(undefined);
    const book = this.queueBook;
    const level = book && findLevel(book, selection.side, selection.price);
    this.queueView.update({
      selection,
      decimals,
      rows: book ? (level ? buildQueue(level) : []) : undefined,
      present: book === undefined || level !== undefined,
      sequence: book?.sequence ?? 0,
    });
  }

  private renderHeader(nowMs: number): void {
    const book = this.book;
    const info = this.selected;
    const ladder = this.ladder;
    const decimals = ladder?.decimals ?? 2;
    const title = info ? `${info.symbol || `#${info.instrumentId}`}` : "—";
    const last = book?.lastTrade;
    const subtitle = book
      ? [
          `${info?.dataset || `publisher ${book.publisherId}`}`,
          `${formatDate(book.tsRecv)} ${formatClock(book.tsRecv)} UTC`,
          `venue seq ${book.sequence}`,
          last ? `last ${formatPrice(last.price, decimals)} × ${last.size}` : "no trade yet",
          `vol ${formatQuantity(book.volume)} (${formatQuantity(book.tradeCount)} trades)`,
          `levels ${book.bidLevelCount}/${book.askLevelCount}`,
          ...anomalyText(book),
        ].join(" · ")
      : info
        ? "waiting for the book…"
        : "";
    const p = (q: number): string => formatMs(this.latency.percentile(q));
    this.header.update({
      title,
      subtitle,
      link: this.selected ? this.bookLink : undefined,
      losses: this.bookLosses,
      nowMs: Date.now(),
      stats: [
        { label: "feed", value: `${formatRate(this.feedRate.rate(nowMs))} msg/s`, testid: "stat-feed", title: "Records/s the server replays (from replay_sequence)" },
        { label: "book", value: `${formatRate(this.bookReceived.rate(nowMs))}/s`, testid: "stat-received", title: "Book updates/s received" },
        { label: "shown", value: `${formatRate(this.bookShown.rate(nowMs))}/s`, testid: "stat-shown", title: "Book updates/s rendered (one per animation frame at most)" },
        { label: "events", value: `${formatRate(this.eventsReceived.rate(nowMs))}/s`, testid: "stat-events", title: "MBO records/s received for this instrument (trade tape)" },
        { label: "latency p50", value: p(50), testid: "stat-p50", title: "ts_out to receipt in this page, last 2048 updates" },
        { label: "p99", value: p(99), testid: "stat-p99", title: "ts_out to receipt in this page, last 2048 updates" },
        { label: "render p99", value: formatMs(this.renderCost.percentile(99)), testid: "stat-render", title: "DOM/canvas work per frame" },
      ],
    });
    document.title = ladder?.bestBid !== undefined && ladder.bestAsk !== undefined ? `${title} ${formatPrice(ladder.bestBid, decimals)} / ${formatPrice(ladder.bestAsk, decimals)} · mbostream` : "mbostream";
  }
}

function selectorOf(info: InstrumentInfo): InstrumentSelector {
  return create(InstrumentSelectorSchema, {
    selector: { case: "instrumentId", value: info.instrumentId },
    publisherId: info.publisherId,
  });
}

function anomalyText(book: BookSnapshot): string[] {
  const total = Object.values(book.anomalyCounts).reduce((sum, n) => sum + n, 0n);
  return total > 0n ? [`${formatQuantity(total)} anomalies`] : [];
}
