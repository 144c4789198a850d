// Builds the playground into dist/: index.html, playground.js (livekit-client bundled in) and
// playground.css. The edge serves these three files by name under /playground/, so the page
// refers to its assets with relative URLs and the bundle has no other chunks or source maps.
import { copyFile, mkdir, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { build } from "esbuild";

const root = dirname(fileURLToPath(import.meta.url));
const src = join(root, "src");
const dist = join(root, "dist");

await rm(dist, { recursive: true, force: true });
await mkdir(dist, { recursive: true });
await build({
  entryPoints: [join(src, "playground.ts")],
  outfile: join(dist, "playground.js"),
  bundle: true,
  format: "esm",
  platform: "browser",
  target: ["es2022", "chrome110", "firefox115", "safari16"],
  minify: true,
  legalComments: "eof",
  logLevel: "warning",
});
await copyFile(join(src, "index.html"), join(dist, "index.html"));
await copyFile(join(src, "playground.css"), join(dist, "playground.css"));
