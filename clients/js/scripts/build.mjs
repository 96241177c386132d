// Builds dist/: ES modules (dist/*.js), CommonJS (dist/cjs/*.cjs) and type declarations for
// both (dist/*.d.ts, dist/cjs/*.d.cts). Each source file becomes one output file, so the
// entry points share one copy of the client at run time.
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";

const root = new URL("..", import.meta.url).pathname;
const dist = join(root, "dist");
rmSync(dist, { recursive: true, force: true });
const sources = readdirSync(join(root, "src"))
  .filter((f) => /\.tsx?$/.test(f))
  .map((f) => join(root, "src", f));

const common = { entryPoints: sources, bundle: false, target: "es2020", platform: "neutral", logLevel: "warning" };
await build({ ...common, format: "esm", outdir: dist });
await build({ ...common, format: "cjs", outdir: join(dist, "cjs"), outExtension: { ".js": ".cjs" } });

// CommonJS files require their siblings by the .cjs name.
for (const file of readdirSync(join(dist, "cjs"))) {
  const path = join(dist, "cjs", file);
  writeFileSync(path, readFileSync(path, "utf8").replace(/require\("(\.\/[^"]+)\.js"\)/g, 'require("$1.cjs")'));
}

execFileSync(join(root, "node_modules/.bin/tsc"), ["-p", join(root, "tsconfig.json")], { stdio: "inherit" });
mkdirSync(join(dist, "cjs"), { recursive: true });
for (const file of readdirSync(dist).filter((f) => f.endsWith(".d.ts"))) {
  const text = readFileSync(join(dist, file), "utf8").replace(/from "(\.\/[^"]+)\.js"/g, 'from "$1.cjs"');
  writeFileSync(join(dist, "cjs", file.replace(/\.d\.ts$/, ".d.cts")), text);
}
