// Reports each entry point's size as an application bundles it: minified, then gzipped, with
// the peer dependencies (React, Vue) left out. `--check` fails when the core client is over
// its budget.
import { build } from "esbuild";
import { gzipSync } from "node:zlib";
import { join } from "node:path";

const root = new URL("..", import.meta.url).pathname;
const BUDGET = 6 * 1024;
const entries = ["index", "sse", "server", "react", "vue"];
const sizes = {};
for (const entry of entries) {
  const out = await build({
    entryPoints: [join(root, "src", `${entry}.ts`)],
    bundle: true,
    minify: true,
    format: "esm",
    target: "es2020",
    write: false,
    external: ["react", "vue"],
  });
  const bytes = out.outputFiles[0].contents;
  sizes[entry] = { minified: bytes.length, gzipped: gzipSync(bytes, { level: 9 }).length };
  console.log(`${`herald-client${entry === "index" ? "" : "/" + entry}`.padEnd(22)} ${String(sizes[entry].minified).padStart(6)} B minified  ${String(sizes[entry].gzipped).padStart(5)} B min+gz`);
}
if (process.argv.includes("--check") && sizes.index.gzipped > BUDGET) {
  console.error(`the core client is ${sizes.index.gzipped} B min+gz, over its budget of ${BUDGET} B`);
  process.exit(1);
}
