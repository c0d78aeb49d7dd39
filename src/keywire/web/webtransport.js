// keywire over WebTransport (HTTP/3) by certificate hash: what keywire.js's dial() uses for a
// `webtransport:HOST:PORT:KEY:CERTHASH[:CERTHASH…]` address where the browser has WebTransport.
//
// The browser pins the listener's short-lived certificates (`serverCertificateHashes`), then
// reads the server's first unidirectional stream, the identity binding (docs/webtransport.md):
// every pinned hash must carry an Ed25519 signature by KEY, the identity that `kps:`/`shs`
// addresses name. Only then does dial() resolve. Streams and datagrams keep keywire.js's API
// (`openStream`, `acceptStream`, `readable`/`writable`, `closeWrite`, `reset(code)`,
// `stopSending(code)`, `sendDatagram`, `receiveDatagram`, `close(code)`, `closed`).
import {
  b64urlDecode, Code, ConnectionClosedError, datagramBytes, DialError, StreamError, webStreams,
} from "./keywire.js";

const CONTEXT = new TextEncoder().encode("keywire webtransport certificate v1\0");
const MAGIC = [0x4b, 0x57, 0x42, 0x31]; // "KWB1"
const ENTRY = 112;
const MAX_RECORD = 5 + 4 * ENTRY;
const MAX_VALIDITY = 14 * 24 * 3600;

/** `{host, port, key, certhashes, digests}` of a `webtransport:` address (DialError if bad). */
export function parseWebTransportAddress(address) {
  const text = String(address).trim();
  if (!text.startsWith("webtransport:")) throw new DialError(`not a webtransport address: ${address}`);
  const args = text.slice("webtransport:".length).split(":");
  const certhashes = [];
  while (args.length && /^u[A-Za-z0-9_-]{46}$/.test(args[args.length - 1])) certhashes.unshift(args.pop());
  if (!certhashes.length || certhashes.length > 4 || args.length < 3) {
    throw new DialError(`a webtransport address is webtransport:HOST:PORT:KEY:CERTHASH…, got ${address}`);
  }
  const keyText = args.pop();
  const portText = args.pop();
  let host = args.join(":");
  if (host.startsWith("[") && host.endsWith("]")) host = host.slice(1, -1);
  if (!/^[0-9]{1,5}$/.test(portText) || +portText < 1 || +portText > 65535) {
    throw new DialError(`bad port ${portText} in ${address}`);
  }
  let key;
  try { key = Uint8Array.from(atob(keyText), (c) => c.charCodeAt(0)); } catch { key = new Uint8Array(); }
  if (key.length !== 32) throw new DialError(`bad Ed25519 key ${keyText} in ${address}`);
  const digests = certhashes.map((h) => {
    const raw = b64urlDecode(h.slice(1));
    if (raw.length !== 34 || raw[0] !== 0x12 || raw[1] !== 0x20) throw new DialError(`bad certhash ${h}`);
    return raw.slice(2);
  });
  return { host, port: +portText, key, certhashes, digests };
}

const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

/** Check the binding record: every pinned digest signed by `key`; throws DialError otherwise. */
export async function verifyBinding(record, key, digests) {
  if (record.length < 5 || MAGIC.some((b, i) => record[i] !== b)) {
    throw new DialError("webtransport: the server's binding record has no KWB1 header", Code.PERMISSION_DENIED);
  }
  const count = record[4];
  if (count < 1 || count > 4 || record.length !== 5 + count * ENTRY) {
    throw new DialError("webtransport: malformed binding record", Code.PERMISSION_DENIED);
  }
  const pub = await crypto.subtle.importKey("raw", key, { name: "Ed25519" }, false, ["verify"]);
  const good = new Set();
  const view = new DataView(record.buffer, record.byteOffset, record.byteLength);
  for (let i = 0; i < count; i++) {
    const at = 5 + i * ENTRY;
    const digest = record.slice(at, at + 32);
    const notBefore = view.getBigUint64(at + 32);
    const notAfter = view.getBigUint64(at + 40);
    const message = new Uint8Array(CONTEXT.length + 48);
    message.set(CONTEXT);
    message.set(record.slice(at, at + 48), CONTEXT.length);
    const ok = await crypto.subtle.verify({ name: "Ed25519" }, pub, record.slice(at + 48, at + ENTRY), message);
    if (ok && notAfter > notBefore && notAfter - notBefore <= BigInt(MAX_VALIDITY)) good.add(hex(digest));
  }
  for (const d of digests) {
    if (!good.has(hex(d))) {
      throw new DialError(`webtransport: certificate ${hex(d).slice(0, 16)}… is not signed by the ` +
        "identity key that was dialed", Code.PERMISSION_DENIED);
    }
  }
}

async function readRecord(stream) {
  const reader = stream.getReader();
  const parts = [];
  let size = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    size += value.length;
    if (size > MAX_RECORD) throw new DialError("webtransport: binding record too long", Code.PERMISSION_DENIED);
    parts.push(value);
  }
  const out = new Uint8Array(size);
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

const streamCode = (e) => (typeof e?.streamErrorCode === "number" ? e.streamErrorCode : Code.NETWORK_ERROR);
const wtError = (code, message) => new WebTransportError({ message, streamErrorCode: code });

/** One bidirectional WebTransport stream with keywire.js's stream API. */
export class WebTransportStream {
  constructor(conn, bidi) {
    this._conn = conn;
    this._reader = bidi.readable.getReader();
    this._writer = bidi.writable.getWriter();
    this._writeClosed = false;
    this._writeError = null;
    this._readStopped = null;
    Object.assign(this, webStreams(this));
  }

  async _pull(controller) {
    try {
      if (this._readStopped) throw this._readStopped;
      const { value, done } = await this._reader.read();
      if (this._readStopped) throw this._readStopped;
      if (done) controller.close(); else controller.enqueue(value);
    } catch (e) {
      controller.error(this._readFailure(e));
    }
  }

  _readFailure(e) {
    if (e instanceof StreamError) return e;
    if (this._conn._error) return new StreamError(Code.CLOSED, `connection ended: ${this._conn._error.message}`, true);
    // Firefox 153 fails a reset stream's reader with a bare TypeError, without the code
    return new StreamError(streamCode(e), `stream reset by peer (${e?.name}: ${e?.message})`, true);
  }

  async write(chunk) {
    if (this._writeError) throw this._writeError;
    if (this._writeClosed) throw new StreamError(Code.CLOSED, "write after closeWrite");
    try {
      await this._writer.write(chunk instanceof Uint8Array ? chunk : new Uint8Array(chunk));
    } catch (e) {
      this._writeError = this._writeError ?? new StreamError(streamCode(e), "peer asked to stop sending", true);
      throw this._writeError;
    }
  }

  async closeWrite() {
    if (this._writeClosed || this._writeError) return;
    this._writeClosed = true;
    await this._writer.close();
  }

  reset(code = Code.RESET) {
    if (this._writeClosed || this._writeError) return;
    this._writeError = new StreamError(code, "reset locally");
    this._writer.abort(wtError(code, "reset")).catch(() => {});
  }

  stopSending(code = Code.CANCELLED) {
    // our reads fail with the code at once, as on every keywire transport
    if (this._readStopped) return;
    this._readStopped = new StreamError(code, "stopped sending locally");
    this._reader.cancel(wtError(code, "stop sending")).catch(() => {});
  }
}

/** A WebTransport session with keywire.js's connection API. */
export class WebTransportConnection {
  constructor(wt, address) {
    this.address = address;
    this._wt = wt;
    this._error = null;
    this._incoming = wt.incomingBidirectionalStreams.getReader();
    this._dgReader = wt.datagrams.readable.getReader();
    this._dgWriter = wt.datagrams.writable.getWriter();
    this.datagramsDropped = 0;
    this.datagrams = new ReadableStream({
      pull: async (controller) => {
        try { controller.enqueue(await this.receiveDatagram()); } catch (e) { controller.error(e); }
      },
    }, { highWaterMark: 0 });
    this.closed = wt.closed.then(
      (info) => this._end(new ConnectionClosedError(info?.closeCode ?? Code.NONE, info?.reason || "closed", !this._localClose)),
      (e) => this._end(new ConnectionClosedError(Code.NETWORK_ERROR, e?.message ?? "session failed", true)));
  }

  _end(error) {
    if (!this._error) this._error = error;
    return this._error;
  }

  get error() { return this._error; }
  get closeCode() { return this._error ? this._error.code : null; }
  get maxDatagramSize() { return this._wt.datagrams.maxDatagramSize ?? 1200; }

  async openStream() {
    if (this._error) throw this._error;
    return new WebTransportStream(this, await this._wt.createBidirectionalStream());
  }

  async acceptStream() {
    if (this._error) throw this._error;
    const { value, done } = await this._incoming.read().catch(() => ({ done: true }));
    if (done) throw this._error ?? new ConnectionClosedError(Code.CLOSED, "connection closed");
    return new WebTransportStream(this, value);
  }

  sendDatagram(data) {
    if (this._error) throw this._error;
    const bytes = datagramBytes(data, this.maxDatagramSize);
    this._dgWriter.write(bytes).catch(() => {});
  }

  async receiveDatagram() {
    if (this._error) throw this._error;
    const { value, done } = await this._dgReader.read().catch(() => ({ done: true }));
    if (done) throw this._error ?? new ConnectionClosedError(Code.CLOSED, "connection closed");
    return value;
  }

  async close(code = Code.NONE, reason = "closed locally") {
    if (!this._error) {
      this._localClose = true;
      this._end(new ConnectionClosedError(code, reason));
      this._wt.close({ closeCode: code, reason });
    }
    await this.closed.catch(() => {});
  }
}

/** Dial a `webtransport:` address; resolves once the identity binding is verified. */
export async function dialWebTransport(address, options = {}) {
  const { host, port, key, digests } = parseWebTransportAddress(address);
  const timeout = options.timeout ?? 15000;
  const url = `https://${host.includes(":") ? `[${host}]` : host}:${port}/keywire`;
  const wt = new WebTransport(url, {
    serverCertificateHashes: digests.map((value) => ({ algorithm: "sha-256", value })),
  });
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new DialError(`dial ${host}:${port} timed out after ${timeout} ms`, Code.TIMEOUT)), timeout);
  });
  try {
    const ready = (async () => {
      await wt.ready;
      const uni = wt.incomingUnidirectionalStreams.getReader();
      const { value, done } = await uni.read();
      uni.releaseLock();
      if (done) throw new DialError("webtransport: no binding record from the server", Code.PERMISSION_DENIED);
      await verifyBinding(await readRecord(value), key, digests);
    })();
    await Promise.race([ready, expired]);
    return new WebTransportConnection(wt, String(address).trim());
  } catch (e) {
    try { wt.close({ closeCode: Code.PERMISSION_DENIED, reason: "dial failed" }); } catch { /* closed */ }
    throw e instanceof DialError ? e : new DialError(`dial ${host}:${port} failed: ${e?.message ?? e}`);
  } finally {
    clearTimeout(timer);
  }
}
