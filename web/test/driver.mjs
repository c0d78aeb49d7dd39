// Drives a local browser for keywire's browser tests and benchmarks (never downloads one).
//
// Usage: node driver.mjs [KIND [ORIGIN...]]   (then JSON lines on stdin, one answer per line
//                                               on stdout)
//   KIND = chromium            Debian's Chromium ($CHROMIUM or /usr/bin/chromium), playwright-core
//        | chromium-nomangle   the same with --force-fieldtrials=WebRTC-NoSdpMangleUfrag/Enabled/
//                              (setLocalDescription refuses an offer whose ICE credentials changed)
//        | firefox             Debian's firefox-esr ($FIREFOX or /usr/bin/firefox-esr) over
//                              WebDriver BiDi with puppeteer-core
//   ORIGIN (Firefox): a page origin ("http://127.0.0.1:PORT") granted camera and microphone in
//   the fresh profile. Firefox gathers ICE candidates only on the default route's address (never
//   loopback) unless the page captures or holds such a permission; with it, a loopback listener
//   works as in Chromium. No device is ever opened.
//   {"id":1,"goto":"http://127.0.0.1:PORT/"}              open the page (one tab)
//   {"id":2,"run":"echo","args":["kps:..."]}             await scenarios[run](...args) in the page
//   {"id":3,"eval":"1+1"}                                 evaluate an expression
// The scenarios module is the page's /test/scenarios.js. Answers: {"id","ok":true,"result"} or
// {"id","ok":false,"error"}; the first line, id 0, says {"kind","version","pid"} (pid: the
// browser process to kill if this driver dies without closing it, null when the browser
// exits with its pipe).
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

const KIND = process.argv[2] || "chromium";
const ORIGINS = process.argv.slice(3);
const CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns"];
// Firefox leaves loopback out of ICE and hides host addresses behind mDNS names by default; the
// loopback pref counts only once the page may use every interface (see ORIGIN above)
const FIREFOX_PREFS = {
  "media.peerconnection.ice.loopback": true,
  "media.peerconnection.ice.obfuscate_host_addresses": false,
  "media.navigator.permission.disabled": true,
  "app.update.enabled": false,
  "browser.shell.checkDefaultBrowser": false,
  "datareporting.policy.dataSubmissionEnabled": false,
  "toolkit.telemetry.enabled": false,
};

const userDataDir = mkdtempSync(join(tmpdir(), `keywire-${KIND}-`));
let page, shutdownBrowser, version, pid = null;

async function launchChromium(extra) {
  const { chromium } = await import("playwright-core");
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [...CHROMIUM_ARGS, ...extra],
    timeout: 30000,
  });
  page = context.pages()[0] ?? await context.newPage();
  version = context.browser()?.version() ?? "chromium";
  shutdownBrowser = () => context.close();
}

/** A permissions defaults file (the format of Firefox's defaults/permissions) for ORIGINS. */
function firefoxPermissions() {
  const lines = [];
  for (const origin of ORIGINS) {
    const { origin: canonical } = new URL(origin);
    for (const type of ["microphone", "camera"]) lines.push(`origin\t${type}\t1\t${canonical}`);
  }
  const file = join(userDataDir, "keywire-permissions");
  writeFileSync(file, lines.join("\n") + "\n");
  return { "permissions.manager.defaultsUrl": `file://${file}` };
}

async function launchFirefox() {
  const { default: puppeteer } = await import("puppeteer-core");
  const browser = await puppeteer.launch({
    browser: "firefox",
    executablePath: process.env.FIREFOX || "/usr/bin/firefox-esr",
    headless: true,
    userDataDir,
    extraPrefsFirefox: { ...FIREFOX_PREFS, ...firefoxPermissions() },
    timeout: 30000,
  });
  pid = browser.process()?.pid ?? null;
  version = await browser.version();
  page = await browser.newPage();
  shutdownBrowser = () => browser.close();
}

function reply(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

async function handle(msg) {
  if (msg.goto) {
    await page.goto(msg.goto);
    return page.url();
  }
  if (msg.run) {
    // one array argument: playwright and puppeteer pass it the same way
    return await page.evaluate(async ([name, args]) => {
      const scenarios = await import("/test/scenarios.js");
      return await scenarios[name](...args);
    }, [msg.run, msg.args ?? []]);
  }
  if (msg.eval) return await page.evaluate(msg.eval);
  throw new Error("unknown command");
}

let shutdown = false;
async function close(code = 0) {
  if (shutdown) return;
  shutdown = true;
  try {
    await Promise.race([shutdownBrowser?.(), new Promise((r) => setTimeout(r, 10000))]);
  } catch { /* the browser may already be gone */ }
  if (pid !== null) {
    try { process.kill(pid, "SIGKILL"); } catch { /* exited */ }
  }
  rmSync(userDataDir, { recursive: true, force: true });
  process.exit(code);
}
process.on("SIGTERM", () => close(0));
process.on("uncaughtException", (e) => {
  process.stderr.write(`driver: ${e?.stack ?? e}\n`);
  close(1);
});

try {
  if (KIND === "chromium") await launchChromium([]);
  else if (KIND === "chromium-nomangle") {
    await launchChromium(["--force-fieldtrials=WebRTC-NoSdpMangleUfrag/Enabled/"]);
  } else if (KIND === "firefox") await launchFirefox();
  else throw new Error(`unknown browser kind ${KIND}`);
} catch (e) {
  reply({ id: 0, ok: false, error: String(e?.message ?? e) });
  await close(1);
}
page.on("console", (m) => process.stderr.write(`[page] ${m.text()}\n`));
page.on("pageerror", (e) => process.stderr.write(`[page error] ${e?.message ?? e}\n`));

reply({ id: 0, ok: true, result: { kind: KIND, version, pid } });
const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  let msg;
  try { msg = JSON.parse(line); } catch { return; }
  handle(msg).then(
    (result) => reply({ id: msg.id, ok: true, result: result ?? null }),
    (error) => reply({ id: msg.id, ok: false, error: String(error?.message ?? error) }),
  );
});
lines.on("close", () => close(0));
