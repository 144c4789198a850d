// Runs the edge's Cloudflare worker bundle in Pyodide under Node, the way the Python Workers
// runtime runs it, and serves requests to it over stdin/stdout (one JSON object per line).
//
//   node harness.mjs BUNDLE_DIR MAIN_MODULE
//
// BUNDLE_DIR is what `python -m infra edge-bundle` writes: every file in it except the assets/
// folder is copied into Pyodide's file system under /session/metadata (where the runtime puts a
// worker's modules), and nothing else from the repository. workers_sdk.py becomes the `workers`
// module in site-packages. The main module is imported by its file name without ".py", its
// exported WorkerEntrypoint class `Default` is constructed with (ctx, env) for each request,
// and its `fetch` gets the request wrapped in workers.Request, as the runtime does.
//
// First line out: {"ready": true, "pyodide": VERSION, "python": VERSION, "files": [...],
// "imported": [...]} or {"ready": false, "error": TRACEBACK}. Then, per request line
// {"id", "method", "url", "headers": [[name, value], ...], "body": BASE64, "env": {...},
// "outbound_status": 200}, one answer line {"id", "status", "headers", "body": BASE64,
// "outbound": [{"url", "method", "headers", "body"}], "background_errors": [...]} or
// {"id", "error": TEXT}. The worker's own output (print) goes to stderr.
//
// No network: Pyodide loads from the npm package's folder, and the `fetch` the worker sees
// records each request and answers it with `outbound_status` without sending anything.

import { readFileSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, posix } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const here = dirname(fileURLToPath(import.meta.url));
const [bundleDir, mainModule] = process.argv.slice(2);
if (!bundleDir || !mainModule?.endsWith(".py")) {
  process.stderr.write("usage: node harness.mjs BUNDLE_DIR MAIN_MODULE.py\n");
  process.exit(2);
}

const NodeRequest = globalThis.Request;
const NodeResponse = globalThis.Response;
let outbound = null; // the current request's outbound fetches; null outside a request
let outboundStatus = 200;
globalThis.fetch = async (input, init) => {
  const request = new NodeRequest(input, init);
  if (outbound === null) {
    throw new Error(`the harness has no network: refused fetch(${request.url})`);
  }
  outbound.push({
    url: request.url,
    method: request.method,
    headers: [...request.headers],
    body: await request.text(),
  });
  return new NodeResponse(null, { status: outboundStatus });
};

function write(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}

function bundleFiles(dir, prefix = "") {
  const found = [];
  for (const entry of readdirSync(join(dir, prefix), { withFileTypes: true })) {
    const rel = prefix ? posix.join(prefix, entry.name) : entry.name;
    if (!prefix && entry.name === "assets" && entry.isDirectory()) continue; // static assets
    if (entry.isDirectory()) found.push(...bundleFiles(dir, rel));
    else found.push(rel);
  }
  return found.sort();
}

const LOAD_ENTRY = `
import importlib, inspect, sys, traceback
import workers

sys.path.insert(0, "/session/metadata")
entry = importlib.import_module(MAIN_MODULE.removesuffix(".py"))
exported = getattr(entry, "__all__", [k for k in dir(entry) if not k.startswith("_")])
entrypoints = {
    name: getattr(entry, name)
    for name in exported
    if inspect.isclass(getattr(entry, name))
    and issubclass(getattr(entry, name), workers.WorkerEntrypoint)
    and getattr(entry, name) is not workers.WorkerEntrypoint
}
if "Default" not in entrypoints:
    raise TypeError(f"{MAIN_MODULE} exports no WorkerEntrypoint class named Default: {exported}")
Default = entrypoints["Default"]
imported = sorted(
    m.__file__.removeprefix("/session/metadata/")
    for m in list(sys.modules.values())
    if (getattr(m, "__file__", None) or "").startswith("/session/metadata/")
)

async def serve(ctx, env, js_request):
    response = await Default(ctx, env).fetch(workers.Request(js_request))
    return response.js_object
`;

let pyodide;
let serve;
const files = bundleFiles(bundleDir);
try {
  const { loadPyodide } = await import(require.resolve("pyodide/pyodide.mjs"));
  const indexURL = dirname(require.resolve("pyodide/pyodide.mjs")) + "/";
  const toStderr = (line) => process.stderr.write(line + "\n");
  pyodide = await loadPyodide({ indexURL, stdout: toStderr, stderr: toStderr });
  const sitePackages = pyodide.runPython("import sysconfig; sysconfig.get_paths()['purelib']");
  pyodide.FS.mkdirTree(sitePackages);
  pyodide.FS.writeFile(`${sitePackages}/workers.py`, readFileSync(join(here, "workers_sdk.py")));
  for (const rel of files) {
    const target = `/session/metadata/${rel}`;
    pyodide.FS.mkdirTree(posix.dirname(target));
    pyodide.FS.writeFile(target, readFileSync(join(bundleDir, rel)));
  }
  const globals = pyodide.toPy({ MAIN_MODULE: mainModule });
  await pyodide.runPythonAsync(LOAD_ENTRY, { globals });
  serve = globals.get("serve");
  write({
    ready: true,
    pyodide: pyodide.version,
    python: pyodide.runPython("import sys; sys.version.split()[0]"),
    files,
    imported: globals.get("imported").toJs(),
  });
} catch (error) {
  write({ ready: false, error: String(error?.message ?? error), files });
  process.exit(1);
}

async function handle(message) {
  const pending = [];
  const backgroundErrors = [];
  // The runtime's ctx.waitUntil keeps a Python awaitable alive (copy) until it settles.
  const ctx = {
    waitUntil(awaitable) {
      const kept = typeof awaitable?.copy === "function" ? awaitable.copy() : awaitable;
      pending.push(
        (async () => {
          try {
            await kept;
          } catch (error) {
            backgroundErrors.push(String(error?.message ?? error));
          } finally {
            kept?.destroy?.();
          }
        })(),
      );
    },
  };
  const env = { ...(message.env ?? {}) };
  const hasBody = !["GET", "HEAD"].includes(message.method);
  const request = new NodeRequest(message.url, {
    method: message.method,
    headers: message.headers ?? [],
    body: hasBody ? Buffer.from(message.body ?? "", "base64") : undefined,
  });
  outbound = [];
  outboundStatus = message.outbound_status ?? 200;
  try {
    const response = await serve(ctx, env, request);
    const body = Buffer.from(await response.arrayBuffer());
    await Promise.all(pending);
    return {
      id: message.id,
      status: response.status,
      headers: [...response.headers],
      body: body.toString("base64"),
      outbound,
      background_errors: backgroundErrors,
    };
  } finally {
    outbound = null;
  }
}

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let message;
  try {
    message = JSON.parse(line);
    write(await handle(message));
  } catch (error) {
    write({ id: message?.id ?? null, error: String(error?.message ?? error) });
  }
}
