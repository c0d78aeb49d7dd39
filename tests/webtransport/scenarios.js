// The browser side of tests/webtransport (served as /test/scenarios.js): each export is a
// scenario the driver awaits in the page (web/test/driver.mjs), returning JSON-able results.
import { dial } from "/keywire.js";

// the WebRTC browser matrix's scenarios (web/test/scenarios.js, served as /test/shared.js): the
// same functions, given a multiaddress with `webtransport:`, run over WebTransport
export * from "/test/shared.js";

const b64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));

async function readAll(readable) {
  const reader = readable.getReader();
  const parts = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    parts.push(value);
  }
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

/** Plain WebTransport (no keywire.js): does the browser reach the listener at all? */
export async function rawEcho(url, hashes) {
  const wt = new WebTransport(url, {
    serverCertificateHashes: hashes.map((h) => ({ algorithm: "sha-256", value: b64(h) })),
  });
  await wt.ready;
  const stream = await wt.createBidirectionalStream();
  const writer = stream.writable.getWriter();
  await writer.write(new TextEncoder().encode("hello"));
  await writer.close();
  const back = new TextDecoder().decode(await readAll(stream.readable));
  wt.close();
  return back;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

function withTimeout(promise, what, ms = 5000) {
  let timer;
  const expired = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out ${what}`)), ms); });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

/** keywire.js dial() on a multiaddress offering kps and webtransport: which path, and an echo. */
export async function dialEcho(address, size) {
  const conn = await dial(address, { timeout: 10000 });
  const kind = conn.constructor.name;
  const stream = await conn.openStream();
  const data = new Uint8Array(size).map((_, i) => (i * 7) & 0xff);
  const reading = readAll(stream.readable);
  const writer = stream.writable.getWriter();
  await writer.write(enc.encode("echo\n"));
  for (let at = 0; at < size; at += 65536) await writer.write(data.slice(at, at + 65536));
  await writer.close();
  const back = await reading;
  let same = back.length === size;
  for (let i = 0; same && i < size; i++) same = back[i] === data[i];
  // a datagram round trip (the server echoes datagrams)
  conn.sendDatagram(enc.encode("ping"));
  const dg = dec.decode(await conn.receiveDatagram());
  await conn.close(0);
  return { kind, same, length: back.length, dg };
}

/** A reset with a code reaches the server as that code; the server's reset reaches us. */
export async function resetCodes(address) {
  const conn = await dial(address, { timeout: 10000 });
  const s = await conn.openStream();
  await s.write(enc.encode("expect-reset\n"));
  // let the command line arrive first: a reset may overtake unacknowledged bytes
  await new Promise((r) => setTimeout(r, 300));
  s.reset(7);
  const report = await withTimeout(conn.acceptStream(), "accepting the report");
  const seen = dec.decode(await withTimeout(readAll(report.readable), "reading the report")).trim();
  const r = await conn.openStream();
  await r.write(enc.encode("reset 9\n"));
  let got = "eof";
  try { await withTimeout(readAll(r.readable), "reading the reset stream"); } catch (e) { got = `${e.name} ${e.code} ${e.remote}`; if (e.code !== 9) got += ` (${e.message})`; }
  await conn.close(0);
  return { seen, got };
}

/** dial() must refuse a listener whose certificates another key signed. */
export async function refused(address) {
  try {
    await dial(address, { timeout: 10000 });
    return "connected";
  } catch (e) {
    return `${e.name}: ${e.message}`;
  }
}

/** webtransport.js's verifyBinding on the vectors of vectors.json (hex in, verdicts out). */
export async function vectors(recordHex, forgedHex, keyHex, digestHexes) {
  const { verifyBinding } = await import("/webtransport.js");
  const bytes = (h) => Uint8Array.from(h.match(/../g), (x) => parseInt(x, 16));
  const digests = digestHexes.map(bytes);
  const verdict = async (record) => {
    try { await verifyBinding(bytes(record), bytes(keyHex), digests); return "ok"; } catch (e) { return e.message; }
  };
  return { genuine: await verdict(recordHex), forged: await verdict(forgedHex) };
}

/** The server closes the session with a code: what does the page see? */
export async function closedByServer(address) {
  const conn = await dial(address, { timeout: 10000 });
  const s = await conn.openStream();
  await s.write(enc.encode("close-me 6\n"));
  const error = await withTimeout(conn.closed, "waiting for the close", 10000);
  return { code: error.code, remote: error.remote, message: error.message };
}

/** stopSending(5) on a stream the server floods: our reads fail with 5 at once; what the
 * server's writes see depends on the browser (test_matrix_stop_sending). */
export async function stopSendingThenWait(address) {
  const conn = await dial(address, { timeout: 10000 });
  const s = await conn.openStream();
  await s.write(enc.encode("flood\n"));
  const reader = s.readable.getReader();
  await reader.read();
  reader.releaseLock();
  s.stopSending(5);
  let local = null;
  try { await readAll(s.readable); } catch (e) { local = e.code; }
  await new Promise((r) => setTimeout(r, 1000));
  await conn.close(0);
  return { local };
}
