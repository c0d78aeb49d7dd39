// Browser-side halves of keywire's browser tests and benchmarks; each runs in the page and
// returns JSON.
// The Python side (tests/webrtc/test_browser.py) serves a listener whose streams obey a
// first-line command: "echo", "reset N", "expect-reset", "flood", "sink SIZE",
// "source SIZE SEED", "close-me N".
import { Code, dial } from "/keywire.js";

const enc = new TextEncoder();
const dec = new TextDecoder();
const BLOCK = 262144;

/** The shared test pattern: byte i is block[i % 262144], block[j] = (31j + (j >> 11) + seed). */
export function pattern(size, seed) {
  const block = new Uint8Array(BLOCK);
  for (let j = 0; j < BLOCK; j++) block[j] = (j * 31 + (j >> 11) + seed) & 0xff;
  const out = new Uint8Array(size);
  for (let at = 0; at < size; at += BLOCK) out.set(block.subarray(0, Math.min(BLOCK, size - at)), at);
  return out;
}

async function sha256hex(bytes) {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function readAll(stream) {
  const parts = [];
  let size = 0;
  for await (const chunk of stream.readable) { parts.push(chunk); size += chunk.length; }
  const out = new Uint8Array(size);
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

async function command(conn, line, body, close = true) {
  const stream = await conn.openStream();
  const writer = stream.writable.getWriter();
  await writer.write(enc.encode(line + "\n"));
  if (body) await writer.write(body);
  if (close) await writer.close(); else writer.releaseLock();
  return stream;
}

async function acceptLine(conn) {
  const stream = await conn.acceptStream();
  return dec.decode(await readAll(stream)).trim();
}

export async function echo(address) {
  const conn = await dial(address);
  const stream = await command(conn, "echo", enc.encode("hello"));
  const text = dec.decode(await readAll(stream));
  await conn.close();
  return text;
}

export async function closeWriteEof(address) {
  const conn = await dial(address);
  const stream = await command(conn, "echo", enc.encode("abc"));
  const reader = stream.readable.getReader();
  let text = "";
  let eof = false;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) { eof = true; break; }
    text += dec.decode(value);
  }
  await conn.close();
  return { text, eof };
}

export async function resetFromServer(address) {
  const conn = await dial(address);
  const stream = await command(conn, "reset 9", null, false);
  try {
    await readAll(stream);
    return { error: null };
  } catch (e) {
    return { name: e.name, code: e.code, remote: e.remote };
  } finally {
    await conn.close();
  }
}

export async function resetFromBrowser(address) {
  const conn = await dial(address);
  const stream = await command(conn, "expect-reset", enc.encode("xyz"), false);
  await new Promise((r) => setTimeout(r, 100));
  stream.reset(7);
  const seen = await acceptLine(conn);
  await conn.close();
  return seen;
}

export async function stopSending(address) {
  const conn = await dial(address);
  const stream = await command(conn, "flood", null, false);
  const reader = stream.readable.getReader();
  await reader.read();
  reader.releaseLock();
  stream.stopSending(5);
  let local = null;
  try { await readAll(stream); } catch (e) { local = e.code; }
  const seen = await acceptLine(conn);
  await conn.close();
  return { seen, local };
}

export async function streams16(address) {
  const conn = await dial(address);
  const results = await Promise.all(Array.from({ length: 16 }, async (_, n) => {
    const payload = pattern(1000 + n * 997, n);
    const stream = await command(conn, "echo", payload);
    const got = await readAll(stream);
    return got.length === payload.length && got.every((b, i) => b === payload[i]);
  }));
  await conn.close();
  return results.filter(Boolean).length;
}

export async function upload(address, size, seed = 1) {
  const conn = await dial(address);
  const data = pattern(size, seed);
  const started = performance.now();
  const stream = await command(conn, `sink ${size}`, data);
  const serverDigest = dec.decode(await readAll(stream)).trim();
  const ms = performance.now() - started;
  await conn.close();
  return { serverDigest, localDigest: await sha256hex(data), ms };
}

export async function download(address, size, seed = 2) {
  const conn = await dial(address);
  const started = performance.now();
  const stream = await command(conn, `source ${size} ${seed}`, null);
  const data = await readAll(stream);
  const ms = performance.now() - started;
  await conn.close();
  return { length: data.length, digest: await sha256hex(data), ms };
}

export async function datagrams(address) {
  const conn = await dial(address);
  let echoed = null;
  for (let i = 0; i < 50 && echoed === null; i++) {
    conn.sendDatagram(enc.encode("ping"));
    echoed = await Promise.race([conn.receiveDatagram().then((d) => dec.decode(d)),
      new Promise((r) => setTimeout(() => r(null), 100))]);
  }
  let tooLarge = null;
  try { conn.sendDatagram(new Uint8Array(1201)); } catch (e) { tooLarge = { code: e.code, limit: e.limit }; }
  // datagrams may be lost (a loaded machine drops some): send again until one comes back
  // (a late echo of a ping above is skipped)
  let full = null;
  for (let i = 0; i < 50 && full === null; i++) {
    conn.sendDatagram(new Uint8Array(1200));
    const got = await Promise.race([conn.receiveDatagram(),
      new Promise((r) => setTimeout(() => r(null), 100))]);
    if (got !== null && got.length === 1200) full = got;
  }
  const max = conn.maxDatagramSize;
  await conn.close();
  return { echoed, tooLarge, max, full: full === null ? null : full.length };
}

export async function wrongCerthash(address) {
  const started = performance.now();
  try {
    await dial(address, { timeout: 3000 });
    return { connected: true };
  } catch (e) {
    return { connected: false, name: e.name, message: e.message, ms: performance.now() - started };
  }
}

export async function closeCode(address) {
  const conn = await dial(address);
  await command(conn, "close-me 6", null, false);
  const error = await conn.closed;
  return { code: error.code, remote: error.remote, closeCode: conn.closeCode };
}

export async function dialTimes(address, count, wire) {
  const times = [];
  for (let i = 0; i < count; i++) {
    const started = performance.now();
    const conn = await dial(address, wire ? { wire } : {});
    await conn.openStream();
    times.push(performance.now() - started);
    await conn.close();
  }
  return times;
}

export async function manyAtOnce(address, count) {
  const started = performance.now();
  const outcomes = await Promise.allSettled(Array.from({ length: count }, async (_, n) => {
    const t = performance.now();
    const conn = await dial(address, { timeout: 30000 });
    const opened = performance.now() - t;
    const stream = await command(conn, "echo", enc.encode(`peer ${n}`));
    const ok = dec.decode(await readAll(stream)) === `peer ${n}`;
    return { conn, ok, opened };
  }));
  const ok = outcomes.filter((o) => o.status === "fulfilled" && o.value.ok);
  const opened = ok.map((o) => o.value.opened).sort((a, b) => a - b);
  const total = performance.now() - started;
  await Promise.all(ok.map((o) => o.value.conn.close()));
  const errors = outcomes.filter((o) => o.status === "rejected").map((o) => String(o.reason?.message));
  return { ok: ok.length, total, median: opened[Math.floor(opened.length / 2)] ?? null,
    max: opened[opened.length - 1] ?? null, errors: errors.slice(0, 3) };
}

export const codes = Code;

// Reference for bench/bench_webrtc.py: a plain data channel between two SEPARATE browser
// processes (one page each), the SDP relayed by the harness, moving the same bytes in the same
// 16 KiB messages with the same 1 MiB send buffering as keywire.js. One pair per page at a time.
let pair = null;

function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") resolve();
    });
  });
}

/** The sending end: create the offer (all candidates gathered) and return its SDP. */
export async function pairOffer() {
  const pc = new RTCPeerConnection({ iceServers: [] });
  const dc = pc.createDataChannel("bench", { ordered: true });
  dc.binaryType = "arraybuffer";
  const opened = new Promise((resolve) => { dc.onopen = resolve; });
  pair = { pc, dc, opened };
  await pc.setLocalDescription();
  await gathered(pc);
  return pc.localDescription.sdp;
}

/** The receiving end: answer `offer`; count `size` bytes, then send one byte back. */
export async function pairAnswer(offer, size) {
  const pc = new RTCPeerConnection({ iceServers: [] });
  const done = new Promise((resolve) => {
    pc.ondatachannel = ({ channel }) => {
      let got = 0;
      channel.binaryType = "arraybuffer";
      channel.onmessage = (m) => {
        got += m.data.byteLength;
        if (got >= size) { channel.send(new Uint8Array(1)); resolve(got); }
      };
    };
  });
  pair = { pc, done };
  await pc.setRemoteDescription({ type: "offer", sdp: offer });
  await pc.setLocalDescription();
  await gathered(pc);
  return pc.localDescription.sdp;
}

/** The sending end: apply the answer and wait until the channel is open. */
export async function pairConnect(answer) {
  await pair.pc.setRemoteDescription({ type: "answer", sdp: answer });
  await pair.opened;
  return true;
}

/** Send `size` bytes; the time from the first byte to the receiver's one-byte confirmation. */
export async function pairSend(size, messageSize = 16384) {
  const { dc } = pair;
  const confirmed = new Promise((resolve) => { dc.onmessage = () => resolve(performance.now()); });
  const chunk = new Uint8Array(messageSize);
  dc.bufferedAmountLowThreshold = 256 << 10;
  const started = performance.now();
  for (let sent = 0; sent < size; sent += messageSize) {
    if (dc.bufferedAmount > (1 << 20)) {
      await new Promise((resolve) => { dc.onbufferedamountlow = resolve; });
    }
    dc.send(chunk.subarray(0, Math.min(messageSize, size - sent)));
  }
  return { ms: (await confirmed) - started };
}

/** The receiving end: bytes received (once all arrived). */
export async function pairReceived() {
  return await pair.done;
}

export async function pairClose() {
  pair?.pc.close();
  pair = null;
  return true;
}

export async function vectors() {
  const { deriveIcePassword, parseAddress, DialError } = await import("/keywire.js");
  const pwd = await deriveIcePassword(new Uint8Array(32), "test");
  const bad = [];
  for (const address of ["127.0.0.1:4242", "127.0.0.1:0:uEiAAAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHw",
    "127.0.0.1:99999:uEiAAAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHw", "127.0.0.1:1:mEiAAAQ",
    "[::1:1:uEiAAAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHw",
    "127.0.0.1:1:uFiAAAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHw"]) {
    try { parseAddress(address); bad.push("accepted " + address); } catch (e) {
      if (!(e instanceof DialError)) bad.push("wrong error for " + address);
    }
  }
  const good = parseAddress("[::1]:9:uEiAAAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHw");
  return { pwd, bad, host: good.host, port: good.port, first: good.digest[1] };
}

/** Wire v2's vector (tests/webrtc/test_wire_v2.py): digest 0..31, nonce 0..11. */
export async function vectorsV2() {
  const { sealServerUfrag, deriveIcePasswordV2, iceCredentials } = await import("/keywire.js");
  const digest = Uint8Array.from({ length: 32 }, (_, i) => i);
  const nonce = Uint8Array.from({ length: 12 }, (_, i) => i);
  const ufrag = await sealServerUfrag(digest, "Tq3v", "abcdefghijklmnopqrstuvwx", nonce);
  const pwd = await deriveIcePasswordV2(digest, ufrag);
  const fresh = await sealServerUfrag(digest, "Tq3v", "abcdefghijklmnopqrstuvwx");
  const creds = iceCredentials("v=0\r\na=ice-ufrag:Ab+/\r\na=ice-pwd:0123456789abcdef012345\r\n");
  return { ufrag, pwd, freshDiffers: fresh !== ufrag && fresh.length === ufrag.length, creds };
}

/**
 * Dial with RTCPeerConnection's createOffer / setLocalDescription watched: report whether every
 * description handed to setLocalDescription is exactly what createOffer returned, then echo.
 */
export async function sdpUntouched(address, wire) {
  const proto = RTCPeerConnection.prototype;
  const { createOffer, setLocalDescription } = proto;
  const offers = [];
  const set = [];
  proto.createOffer = async function (...a) {
    const offer = await createOffer.apply(this, a);
    offers.push(offer.sdp);
    return offer;
  };
  proto.setLocalDescription = function (desc, ...a) {
    set.push(desc === undefined ? null : desc.sdp);
    return setLocalDescription.call(this, desc, ...a);
  };
  let echoed = null, error = null;
  try {
    const conn = await dial(address, wire ? { wire, timeout: 10000 } : { timeout: 10000 });
    const s = await command(conn, "echo", enc.encode("same sdp"));
    echoed = dec.decode(await readAll(s));
    await conn.close();
  } catch (e) {
    error = String(e.message);
  } finally {
    proto.createOffer = createOffer;
    proto.setLocalDescription = setLocalDescription;
  }
  return { offers: offers.length, set: set.length, equal: set.length > 0 && set.every((s, i) => s === offers[i]),
    echoed, error };
}

/** The server misbehaves on purpose (command `poison KIND`); report how the browser closed. */
export async function serverViolation(address, kind) {
  const conn = await dial(address);
  const stream = await command(conn, `poison ${kind}`, null, false);
  let readError = null;
  if (kind !== "overrun") {  // reading would grant credit as it goes: an overrun needs a non-reader
    const reader = stream.readable.getReader();
    try { for (;;) { const { done } = await reader.read(); if (done) break; } } catch (e) { readError = e.code; }
  }
  const error = await conn.closed;
  return { code: error.code, remote: error.remote, message: error.message, readError };
}

export async function streamLimit(address) {
  const conn = await dial(address);
  const idle = [];
  for (let i = 0; i < 100; i++) idle.push(await conn.openStream());
  let extraOpened = false;
  const extra = conn.openStream().then((s) => { extraOpened = true; return s; });
  await new Promise((r) => setTimeout(r, 300));
  const blocked = !extraOpened;
  const first = idle[0];
  const w = first.writable.getWriter();
  await w.write(enc.encode("echo\nq"));
  await w.close();
  const echoed = dec.decode(await readAll(first));
  const next = await extra;
  const w2 = next.writable.getWriter();  // the one slot the retirement freed
  await w2.write(enc.encode("echo\nafter"));
  await w2.close();
  const after = dec.decode(await readAll(next));
  await conn.close();
  return { blocked, echoed, opened: next !== undefined, after };
}
