import { describe, expect, it } from "vitest";
import { splitLaunchToken, takeLaunchToken } from "./launch-token";

/** A stand-in for the browser's Location and History: replaceState changes the address. */
class AddressBar {
  readonly replaced: string[] = [];
  state: unknown = { kept: true };
  constructor(public href: string) {}
  replaceState(state: unknown, _unused: string, url?: string | URL | null): void {
    this.state = state;
    this.href = new URL(String(url), this.href).href;
    this.replaced.push(this.href);
  }
}

describe("splitLaunchToken", () => {
  it("takes the token from the fragment and leaves the rest of the URL", () => {
    expect(splitLaunchToken("http://127.0.0.1:8080/#token=Ab-c_9")).toEqual({
      token: "Ab-c_9",
      url: "http://127.0.0.1:8080/",
    });
    expect(splitLaunchToken("http://127.0.0.1:8080/?depth=20&ups=30#token=Ab-c_9")).toEqual({
      token: "Ab-c_9",
      url: "http://127.0.0.1:8080/?depth=20&ups=30",
    });
  });

  it("decodes a percent-encoded token", () => {
    expect(splitLaunchToken("http://h/#token=a%2Fb%3Dc%20d").token).toBe("a/b=c d");
  });

  it("leaves URLs without a token alone, the instrument fragment included", () => {
    for (const href of ["http://h/", "http://h/?depth=5", "http://h/#CLX5", "http://h/#tokens", "http://h/?token=x"]) {
      expect(splitLaunchToken(href)).toEqual({ token: "", url: href });
    }
  });

  it("drops a fragment that is not a decodable token without taking it", () => {
    expect(splitLaunchToken("http://h/#token=%E0%A4%A")).toEqual({ token: "", url: "http://h/" });
  });
});

describe("takeLaunchToken", () => {
  it("returns the token and replaces the address with one without it, keeping the history state", () => {
    const bar = new AddressBar("http://127.0.0.1:8080/#token=s3cret-token");
    expect(takeLaunchToken(bar, bar)).toBe("s3cret-token");
    expect(bar.href).toBe("http://127.0.0.1:8080/");
    expect(bar.replaced).toEqual(["http://127.0.0.1:8080/"]);
    expect(bar.state).toEqual({ kept: true });
    expect(takeLaunchToken(bar, bar)).toBe("");
    expect(bar.replaced).toHaveLength(1);
  });

  it("does not touch the history without a token", () => {
    const bar = new AddressBar("http://127.0.0.1:8080/#CLX5");
    expect(takeLaunchToken(bar, bar)).toBe("");
    expect(bar.replaced).toEqual([]);
    expect(bar.href).toBe("http://127.0.0.1:8080/#CLX5");
  });
});
