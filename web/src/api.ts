// The one gRPC-Web transport of the page and its typed clients.

import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { MarketDataService } from "./gen/mbostream/v1/market_data_pb";
import { ReplayService } from "./gen/mbostream/v1/replay_pb";
import { StreamEndedError } from "./net/resilient";

export interface Api {
  readonly market: Client<typeof MarketDataService>;
  readonly replay: Client<typeof ReplayService>;
}

/** Clients for the API at `baseUrl` (the page's own origin behind Envoy); every call is a trace. */
export function createApi(baseUrl: string): Api {
  const transport = createGrpcWebTransport({ baseUrl, useBinaryFormat: true, interceptors: [startTrace] });
  return { market: createClient(MarketDataService, transport), replay: createClient(ReplayService, transport) };
}

/** A fresh W3C traceparent: version 00, random 16-byte trace id and 8-byte span id, sampled. */
export function newTraceparent(): string {
  const hex = (bytes: number): string => {
    // All-zero ids are invalid (a 2^-64 chance, yet a tracing backend would drop the trace).
    for (;;) {
      const random = crypto.getRandomValues(new Uint8Array(bytes));
      const id = Array.from(random, (b) => b.toString(16).padStart(2, "0")).join("");
      if (/[^0]/.test(id)) return id;
    }
  };
  return `00-${hex(16)}-${hex(8)}-01`;
}

/** Starts a trace for each call that does not carry one: Envoy and the server continue it. */
const startTrace: Interceptor = (next) => (request) => {
  if (!request.header.has("traceparent")) request.header.set("traceparent", newTraceparent());
  return next(request);
};

/** Call options carrying the operator token, which lives only in memory. */
export function withToken(token: string): { headers: Record<string, string> } {
  return token ? { headers: { authorization: `Bearer ${token}` } } : { headers: {} };
}

/** "Unauthenticated: missing or wrong operator token", for toasts and panels. */
export function describeError(error: unknown): string {
  if (error instanceof StreamEndedError) return "the server closed the stream; reconnecting";
  const connectError = ConnectError.from(error);
  return `${Code[connectError.code]}: ${connectError.rawMessage || "(no message)"}`;
}

/** The gRPC status code of an error (Unknown for anything that is not a ConnectError). */
export function errorCode(error: unknown): Code {
  return ConnectError.from(error).code;
}

/** True for errors that mean "the server or the edge is unreachable", whichever stream saw them. */
export function isConnectionLoss(error: unknown): boolean {
  return error instanceof StreamEndedError || errorCode(error) === Code.Unavailable;
}

export function isCancel(error: unknown): boolean {
  return errorCode(error) === Code.Canceled;
}

export { Code };
