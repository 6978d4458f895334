// Entry point: reads the page's options from its URL and starts the app.
//
// URL parameters (all optional): depth (levels per side, default 15), ups
// (book updates/s asked of the server, default 60). The API lives on the
// page's own origin (Envoy); VITE_API_BASE overrides it for `npm run dev`.

import "./styles.css";
import { App } from "./app";
import { createApi } from "./api";

function intParam(params: URLSearchParams, name: string, fallback: number, min: number, max: number): number {
  const value = Number.parseInt(params.get(name) ?? "", 10);
  return Number.isFinite(value) ? Math.min(max, Math.max(min, value)) : fallback;
}

const params = new URLSearchParams(window.location.search);
const baseUrl = import.meta.env.VITE_API_BASE || window.location.origin;
const root = document.getElementById("app");
if (!root) throw new Error("index.html has no #app element");
new App(root, createApi(baseUrl), {
  baseUrl,
  depth: intParam(params, "depth", 15, 1, 100),
  maxUpdatesPerSecond: intParam(params, "ups", 60, 1, 1000),
  tapeRows: 40,
  chartPoints: 1500,
}).start();
