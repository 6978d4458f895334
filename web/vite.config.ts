import { defineConfig } from "vitest/config";

// The built UI is served by Envoy next to the API (same origin), so asset URLs
// are absolute from "/". In `npm run dev`, set VITE_API_BASE to the edge's URL
// and start the edge with --allowed-origin http://localhost:5173.
export default defineConfig({
  build: {
    target: "es2022",
    outDir: "dist",
    emptyOutDir: true,
    sourcemap: false,
    reportCompressedSize: true,
  },
  server: { host: "127.0.0.1", port: 5173, strictPort: true },
  test: {
    include: ["src/**/*.test.ts"],
    environment: "node",
  },
});
