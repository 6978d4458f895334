import { describe, expect, it } from "vitest";
import { EpochWatch } from "./epoch";

describe("EpochWatch", () => {
  it("sees no change on the first epoch nor while it stays the same", () => {
    const watch = new EpochWatch();
    expect(watch.changed("aaaa000011112222")).toBe(false);
    expect(watch.changed("aaaa000011112222")).toBe(false);
    expect(watch.value).toBe("aaaa000011112222");
  });

  it("reports a restarted server once, then follows the new run", () => {
    const watch = new EpochWatch();
    watch.changed("aaaa000011112222");
    expect(watch.changed("bbbb000011112222")).toBe(true);
    expect(watch.changed("bbbb000011112222")).toBe(false);
  });

  it("ignores servers that send no epoch, and starts over after reset", () => {
    const watch = new EpochWatch();
    expect(watch.changed("")).toBe(false);
    watch.changed("aaaa000011112222");
    expect(watch.changed("")).toBe(false);
    expect(watch.value).toBe("aaaa000011112222");
    watch.reset();
    expect(watch.changed("bbbb000011112222")).toBe(false);
  });
});
