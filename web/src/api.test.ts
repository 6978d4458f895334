import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { describeError, isCancel, isConnectionLoss, withToken } from "./api";
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
