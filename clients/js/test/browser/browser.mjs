// Browser test harness: Debian's Chromium driven by playwright-core (never a downloaded
// browser), and a static server for pages bundled from test/browser/pages with esbuild.
import { build } from "esbuild";
import { createServer } from "node:http";
import { chromium } from "playwright-core";

export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

/** Headless Chromium with a fresh profile and no background traffic. */
export function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/**
 * Bundles each page (`{name: sourcePath}`) with the SDK and serves it as `/<name>.html`.
 * Resolves with the server's base URL and a `close()`.
 */
export async function servePages(pages) {
  const scripts = {};
  for (const [name, entry] of Object.entries(pages)) {
    const out = await build({
      entryPoints: [entry],
      bundle: true,
      format: "esm",
      target: "es2020",
      write: false,
      jsx: "automatic",
      define: { "process.env.NODE_ENV": '"development"', __VUE_OPTIONS_API__: "true", __VUE_PROD_DEVTOOLS__: "false", __VUE_PROD_HYDRATION_MISMATCH_DETAILS__: "false" },
      logLevel: "warning",
    });
    scripts[name] = out.outputFiles[0].text;
  }
  const server = createServer((req, res) => {
    const match = /^\/([\w-]+)\.(html|js)/.exec(req.url ?? "");
    const script = match && scripts[match[1]];
    if (!script) {
      res.writeHead(404).end();
      return;
    }
    if (match[2] === "js") {
      res.writeHead(200, { "content-type": "text/javascript" }).end(script);
    } else {
      res
        .writeHead(200, { "content-type": "text/html" })
        .end(`<!doctype html><meta charset="utf-8"><title>${match[1]}</title><div id="app"></div><script type="module" src="/${match[1]}.js"></script>`);
    }
  });
  await new Promise((ready) => server.listen(0, "127.0.0.1", ready));
  const { port } = server.address();
  return { base: `http://127.0.0.1:${port}`, close: () => new Promise((done) => server.close(done)) };
}
