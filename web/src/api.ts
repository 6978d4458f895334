// The one gRPC-Web transport of the page and its typed clients.

import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { MarketDataService } from "./gen/mbostream/v1/market_data_pb";
import { ReplayService } from "./gen/mbostream/v1/replay_pb";
import { StreamEndedError } from "./net/resilient";

export interface Api {
  readonly market: Client<typeof MarketDataService>;
  readonly replay: Client<typeof ReplayService>;
}

/** Clients for the API at `baseUrl` (the page's own origin behind Envoy). */
export function createApi(baseUrl: string): Api {
  const transport = createGrpcWebTransport({ baseUrl, useBinaryFormat: true });
  return { market: createClient(MarketDataService, transport), replay: createClient(ReplayService, transport) };
}

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
