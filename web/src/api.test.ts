/// <reference types="node" />
import { createServer, type IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { createApi, describeError, isCancel, isConnectionLoss, newTraceparent, withToken } from "./api";
import { StreamEndedError } from "./net/resilient";

describe("errors as the page shows them", () => {
  it("names the status code and the server's message", () => {
    expect(describeError(new ConnectError("missing or wrong operator token", Code.Unauthenticated))).toBe(
      "Unauthenticated: missing or wrong operator token",
    );
    expect(describeError(new StreamEndedError())).toBe("the server closed the stream; reconnecting");
  });

  it("tells a lost connection from a failed call", () => {
    expect(isConnectionLoss(new ConnectError("upstream connect error", Code.Unavailable))).toBe(true);
    expect(isConnectionLoss(new StreamEndedError())).toBe(true);
    expect(isConnectionLoss(new ConnectError("no", Code.Unauthenticated))).toBe(false);
    expect(isCancel(new ConnectError("aborted", Code.Canceled))).toBe(true);
  });
});

describe("withToken", () => {
  it("sends the operator token as a bearer authorization header, and nothing without one", () => {
    expect(withToken("s3cret-token")).toEqual({ headers: { authorization: "Bearer s3cret-token" } });
    expect(withToken("")).toEqual({ headers: {} });
  });
});

const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-01$/;

/** Every call's request headers, as a real HTTP server on a free port receives them; it answers
 * each gRPC-Web call with a trailers-only UNIMPLEMENTED. */
async function withRecordingServer(use: (baseUrl: string, seen: IncomingHttpHeaders[]) => Promise<void>): Promise<void> {
  const seen: IncomingHttpHeaders[] = [];
  const server = createServer((request, response) => {
    seen.push(request.headers);
    request.resume();
    response.writeHead(200, { "content-type": "application/grpc-web+proto", "grpc-status": "12", "grpc-message": "recorded" });
    response.end();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  try {
    await use(`http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen);
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
}

describe("traceparent", () => {
  it("is a valid W3C version-00 sampled header with random ids", () => {
    const ids = new Set<string>();
    for (let i = 0; i < 1000; i++) {
      const match = TRACEPARENT.exec(newTraceparent());
      expect(match).not.toBeNull();
      expect(match?.[1]).not.toMatch(/^0+$/);
      expect(match?.[2]).not.toMatch(/^0+$/);
      ids.add(match?.[1] ?? "");
    }
    expect(ids.size).toBe(1000);
  });

  it("goes with every call, a fresh trace each, and a caller's own is kept", async () => {
    await withRecordingServer(async (baseUrl, seen) => {
      const api = createApi(baseUrl);
      const unimplemented = { code: Code.Unimplemented };
      await expect(api.market.listInstruments({}, { timeoutMs: 5000 })).rejects.toMatchObject(unimplemented);
      await expect(api.replay.getStatus({}, { timeoutMs: 5000, ...withToken("t") })).rejects.toMatchObject(unimplemented);
      const own = newTraceparent();
      const options = { timeoutMs: 5000, headers: { traceparent: own } };
      await expect(api.market.listInstruments({}, options)).rejects.toMatchObject(unimplemented);
      const sent = seen.map((headers) => String(headers["traceparent"]));
      expect(sent).toHaveLength(3);
      expect(sent[0]).toMatch(TRACEPARENT);
      expect(sent[1]).toMatch(TRACEPARENT);
      expect(TRACEPARENT.exec(sent[0] ?? "")?.[1]).not.toBe(TRACEPARENT.exec(sent[1] ?? "")?.[1]);
      expect(sent[2]).toBe(own);
    });
  });
});
