/// <reference types="vite/client" />

interface ImportMetaEnv {
  /** The API's base URL for `npm run dev` (the edge, e.g. http://127.0.0.1:8080); unset in builds served by Envoy. */
  readonly VITE_API_BASE?: string;
}
