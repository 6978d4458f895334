// The operator panel: the replay's status and its controls (pause, resume,
// rate, restart). The token is typed here and kept only in memory by the app.

import { ReplayMode, ReplayState, type ReplayStatus } from "../gen/mbostream/v1/replay_pb";
import { formatRate } from "../model/format";
import { formatQuantity } from "../model/price";
import { h, setData, setText } from "./dom";

export interface OperatorActions {
  readonly setToken: (token: string) => void;
  readonly pause: () => void;
  readonly resume: () => void;
  readonly restart: () => void;
  readonly setRate: (recordsPerSecond: number) => void;
  readonly setMax: () => void;
}

export interface OperatorModel {
  readonly hasToken: boolean;
  readonly status: ReplayStatus | undefined;
  /** The outcome of the last action, e.g. "Paused" or "Pause failed: Unauthenticated: …". */
  readonly message: string;
  readonly failed: boolean;
  readonly busy: boolean;
}

function describePacing(status: ReplayStatus): string {
  switch (status.mode) {
    case ReplayMode.RATE:
      return `${formatRate(status.targetRecordsPerSecond)} rec/s target`;
    case ReplayMode.SPEED:
      return `${status.speed}× recorded speed`;
    case ReplayMode.MAX:
      return "max speed";
    default:
      return "";
  }
}

export class OperatorView {
  readonly element: HTMLElement;
  private readonly state: HTMLElement;
  private readonly detail: HTMLElement;
  private readonly message: HTMLElement;
  private readonly tokenState: HTMLElement;
  private readonly buttons: HTMLButtonElement[];

  constructor(actions: OperatorActions) {
    const token = h("input", {
      testid: "op-token",
      attrs: { type: "password", autocomplete: "off", placeholder: "operator token", "aria-label": "Operator token", spellcheck: "false" },
    });
    const useToken = h("button", { text: "Use", testid: "op-token-use" });
    const forget = h("button", { text: "Forget", testid: "op-token-forget" });
    const submitToken = (): void => {
      actions.setToken(token.value.trim());
      token.value = "";
    };
    useToken.addEventListener("click", submitToken);
    token.addEventListener("keydown", (event) => {
      if (event.key === "Enter") submitToken();
    });
    forget.addEventListener("click", () => actions.setToken(""));
    const button = (text: string, testid: string, action: () => void): HTMLButtonElement => {
      const element = h("button", { text, testid });
      element.addEventListener("click", action);
      return element;
    };
    const rate = h("input", { testid: "op-rate", attrs: { type: "number", min: "1", step: "1000", placeholder: "records/s", "aria-label": "Records per second" } });
    const setRate = button("Set rate", "op-set-rate", () => {
      const value = Number(rate.value);
      if (Number.isFinite(value) && value > 0) actions.setRate(value);
    });
    this.buttons = [
      button("Pause", "op-pause", actions.pause),
      button("Resume", "op-resume", actions.resume),
      button("Restart", "op-restart", actions.restart),
    ];
    const max = button("Max", "op-max", actions.setMax);
    this.state = h("span", { class: "op-state", testid: "op-state" });
    this.detail = h("div", { class: "op-detail", testid: "op-detail" });
    this.message = h("div", { class: "op-message", testid: "op-message", attrs: { role: "status" } });
    this.tokenState = h("span", { class: "token-state", testid: "op-token-state" });
    this.element = h(
      "section",
      { class: "panel operator-panel", testid: "operator" },
      h("header", {}, h("h2", { text: "Replay" }), this.state),
      this.detail,
      h("div", { class: "row" }, token, useToken, forget),
      this.tokenState,
      h("div", { class: "row" }, ...this.buttons),
      h("div", { class: "row" }, rate, setRate, max),
      this.message,
    );
    this.buttons.push(setRate, max);
  }

  update(model: OperatorModel): void {
    setText(this.tokenState, model.hasToken ? "token set (kept in this tab's memory only)" : "no token: controls need the operator token");
    const status = model.status;
    const state = status ? (ReplayState[status.state] ?? "UNKNOWN") : "UNKNOWN";
    setText(this.state, status ? state : "—");
    setData(this.state, "state", state.toLowerCase());
    if (status) {
      const progress = status.recordsTotal > 0n ? ` · ${((Number(status.recordsDone) / Number(status.recordsTotal)) * 100).toFixed(1)}%` : "";
      setText(
        this.detail,
        `${describePacing(status)} · ${formatRate(status.achievedRecordsPerSecond)} rec/s now · ${formatQuantity(status.recordsDone)} records${progress}${status.loop ? ` · loop ${status.loopsCompleted}` : ""}`,
      );
    } else {
      setText(this.detail, model.hasToken ? "" : "Status needs the operator token.");
    }
    setText(this.message, model.message);
    setData(this.message, "failed", String(model.failed));
    for (const button of this.buttons) button.disabled = model.busy;
  }
}
