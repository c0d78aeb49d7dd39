// Drives Debian's Chromium for keywire's browser tests and benchmarks (never downloads one).
//
// Usage: node driver.mjs            (then JSON lines on stdin, one answer per line on stdout)
//   {"id":1,"goto":"http://127.0.0.1:PORT/"}              open the page (one tab)
//   {"id":2,"run":"echo","args":["kps:..."]}             await scenarios[run](...args) in the page
//   {"id":3,"eval":"1+1"}                                 evaluate an expression
// The scenarios module is the page's /test/scenarios.js. Answers: {"id","ok":true,"result"} or
// {"id","ok":false,"error"}.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const userDataDir = mkdtempSync(join(tmpdir(), "keywire-chromium-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns"],
});
const page = context.pages()[0] ?? await context.newPage();
page.on("console", (m) => process.stderr.write(`[page] ${m.text()}\n`));
page.on("pageerror", (e) => process.stderr.write(`[page error] ${e.message}\n`));

function reply(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

async function handle(msg) {
  if (msg.goto) {
    await page.goto(msg.goto);
    return page.url();
  }
  if (msg.run) {
    return await page.evaluate(async ([name, args]) => {
      const scenarios = await import("/test/scenarios.js");
      return await scenarios[name](...args);
    }, [msg.run, msg.args ?? []]);
  }
  if (msg.eval) return await page.evaluate(msg.eval);
  throw new Error("unknown command");
}

let shutdown = false;
async function close() {
  if (shutdown) return;
  shutdown = true;
  await context.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
  process.exit(0);
}

reply({ id: 0, ok: true, result: "ready" });
const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  let msg;
  try { msg = JSON.parse(line); } catch { return; }
  handle(msg).then(
    (result) => reply({ id: msg.id, ok: true, result: result ?? null }),
    (error) => reply({ id: msg.id, ok: false, error: String(error?.message ?? error) }),
  );
});
lines.on("close", close);
process.on("SIGTERM", close);
