// keywire for the browser: dial a KPS address over WebRTC-direct and speak KPS wire v1 frames.
//
// A KPS address (`IP:PORT:CERTHASH`, optionally `kps:`-prefixed, IPv6 bracketed) is all the
// browser needs: it invents the server's SDP answer, derives the server's ICE password from the
// certhash (so only someone who knows the address gets an answer), pins DTLS to the certhash
// through the answer's fingerprint, then exchanges HELLO on channel 0. No signalling server is
// involved. By default (keywire wire v2, docs/webrtc.md) the browser's own offer is handed to
// setLocalDescription untouched; its ICE password reaches the server sealed inside the
// server's ufrag. `{wire: 1}` is KPS's munging scheme, for KPS servers.
//
//   import { dial } from "./keywire.js";
//   const conn = await dial("127.0.0.1:4242:uEi...");
//   const stream = await conn.openStream();
//   const writer = stream.writable.getWriter();
//   await writer.write(new TextEncoder().encode("hello"));
//   await writer.close();                          // FIN: the peer reads EOF
//   for await (const chunk of stream.readable) …   // ends iff the peer sent FIN
//
// Streams are WHATWG streams with QUIC's lifecycle: `closeWrite()` (FIN), `reset(code)`,
// `stopSending(code)`; errors carry a code from KPS's registry (`Code`).

export const Code = Object.freeze({
  NONE: 0, CANCELLED: 1, CLOSED: 2, RESET: 3, TIMEOUT: 4, NETWORK_ERROR: 5, PROTOCOL_ERROR: 6,
  UNSUPPORTED: 7, TOO_LARGE: 8, QUEUE_FULL: 9, PERMISSION_DENIED: 10, INTERNAL_ERROR: 11,
});
const CODE_NAMES = Object.fromEntries(
  Object.entries(Code).map(([k, v]) => [v, v === 0 ? "none" : k.toLowerCase().replace("_", "-")]));

export function codeName(code) {
  return CODE_NAMES[code] ?? "internal-error";
}

/** An end with a code (see `Code`); `remote`: the peer chose it. */
class CodedError extends Error {
  constructor(name, code, message, remote) {
    super(`${codeName(code)} (${code}, ${remote ? "peer" : "local"}): ${message}`);
    this.name = name;
    this.code = code;
    this.remote = remote;
  }
}

/** A stream ended other than by the peer's FIN. */
export class StreamError extends CodedError {
  constructor(code, message, remote = false) {
    super("StreamError", code, message, remote);
  }
}

/** The connection ended; `code` says why (0 is a clean close). */
export class ConnectionClosedError extends CodedError {
  constructor(code, message, remote = false) {
    super("ConnectionClosedError", code, message, remote);
  }
}

/** A dial that did not produce a connection (timeout, ICE or DTLS failure, bad address). */
export class DialError extends Error {
  constructor(message, code = Code.NETWORK_ERROR) {
    super(message);
    this.name = "DialError";
    this.code = code;
  }
}

/** `data` as bytes, or a DatagramTooLargeError (`code` TOO_LARGE, `limit`) if it exceeds `limit`. */
export function datagramBytes(data, limit) {
  const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
  if (bytes.length > limit) {
    const e = new Error(`datagram of ${bytes.length} bytes exceeds the limit of ${limit}`);
    e.name = "DatagramTooLargeError";
    e.code = Code.TOO_LARGE;
    e.limit = limit;
    throw e;
  }
  return bytes;
}

/**
 * `{readable, writable}` (WHATWG streams) over a stream object with `_pull(controller)`,
 * `write`, `closeWrite`, `reset(code)` and `stopSending(code)`: a cancelled reader is
 * STOP_SENDING, an aborted writer a RESET, and bytes are pulled only when the application asks.
 */
export function webStreams(stream) {
  const readable = new ReadableStream({
    pull: (controller) => stream._pull(controller),
    cancel: (reason) => stream.stopSending(reason?.code ?? Code.CANCELLED),
  }, { highWaterMark: 0 });
  const writable = new WritableStream({
    write: (chunk) => stream.write(chunk),
    close: () => stream.closeWrite(),
    abort: (reason) => stream.reset(reason?.code ?? Code.RESET),
  }, { highWaterMark: 1 });
  return { readable, writable };
}

// -- constants of KPS wire v1 ------------------------------------------------------------------
export const MAX_DATAGRAM_SIZE = 1200;
const MAX_FRAME = 16384;
const MAX_DATA = MAX_FRAME - 1;
const MAX_OFFSET = 2n ** 62n - 1n;
const BUFFER_HIGH = 1 << 20;
const BUFFER_LOW = 256 << 10;
const DEFAULTS = { streamWindow: 1 << 20, connectionWindow: 8 << 20, maxStreams: 100 };

// -- address, certhash, ICE password, SDP --------------------------------------------------------
export function b64urlDecode(text) {
  const std = text.replace(/-/g, "+").replace(/_/g, "/");
  const bin = atob(std + "===".slice((std.length + 3) % 4));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

/** `{host, port, certhash, digest}` of a KPS address; throws DialError naming the problem. */
export function parseAddress(address) {
  let text = String(address).trim();
  if (text.startsWith("kps:")) text = text.slice(4);
  let host, rest;
  if (text.startsWith("[")) {
    const close = text.indexOf("]");
    if (close < 0 || text[close + 1] !== ":") throw new DialError(`bad KPS address ${address}`);
    host = text.slice(1, close);
    rest = text.slice(close + 2).split(":");
  } else {
    const parts = text.split(":");
    host = parts[0];
    rest = parts.slice(1);
  }
  if (rest.length !== 2) throw new DialError(`a KPS address is IP:PORT:CERTHASH, got ${address}`);
  const [portText, certhash] = rest;
  if (!/^[0-9]{1,5}$/.test(portText) || +portText < 1 || +portText > 65535) {
    throw new DialError(`bad port ${portText} in ${address}`);
  }
  if (!/^u[A-Za-z0-9_-]{46}$/.test(certhash)) {
    throw new DialError(`certhash must be 'u' + 46 base64url characters: ${certhash}`);
  }
  const raw = b64urlDecode(certhash.slice(1));
  if (raw.length !== 34 || raw[0] !== 0x12 || raw[1] !== 0x20) {
    throw new DialError(`certhash is not a sha2-256 multihash: ${certhash}`);
  }
  return { host, port: +portText, certhash, digest: raw.slice(2) };
}

function subtle() {
  if (!globalThis.crypto?.subtle) {
    throw new DialError("WebCrypto is unavailable: serve the page over https or from localhost");
  }
  return crypto.subtle;
}

async function hmacSha256(keyBytes, text) {
  const key = await subtle().importKey("raw", keyBytes, { name: "HMAC", hash: "SHA-256" },
    false, ["sign"]);
  return new Uint8Array(await subtle().sign("HMAC", key, new TextEncoder().encode(text)));
}

function b64nopad(bytes) {
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/=+$/, "");
}

/** KPS: base64std_nopad(HMAC-SHA256(digest, "kps-ice-pwd-v1:" || ufrag)). */
export async function deriveIcePassword(digest, ufrag) {
  return b64nopad(await hmacSha256(digest, "kps-ice-pwd-v1:" + ufrag));
}

/** Wire v2: the server's password, base64std_nopad(HMAC-SHA256(digest, "keywire-ice-pwd-v2:" || serverUfrag)). */
export async function deriveIcePasswordV2(digest, serverUfrag) {
  return b64nopad(await hmacSha256(digest, "keywire-ice-pwd-v2:" + serverUfrag));
}

const ICE_UFRAG = /^[A-Za-z0-9+/]{4,256}$/;
const ICE_PWD = /^[A-Za-z0-9+/]{22,128}$/;

/**
 * Wire v2: the server ufrag that carries the browser's own ICE password to the server,
 * base64std_nopad(nonce(12) || AES-256-GCM(key, nonce, clientPwd, aad = "keywire-ice-v2:" || clientUfrag))
 * with key = HMAC-SHA256(digest, "keywire-ice-v2-key"). `nonce` is random unless given (vectors).
 */
export async function sealServerUfrag(digest, clientUfrag, clientPwd, nonce) {
  if (!ICE_UFRAG.test(clientUfrag) || !ICE_PWD.test(clientPwd)) {
    throw new DialError("wire v2 needs a 4..256 ice-char ufrag and a 22..128 ice-char password");
  }
  const iv = nonce ?? crypto.getRandomValues(new Uint8Array(12));
  const key = await subtle().importKey("raw", await hmacSha256(digest, "keywire-ice-v2-key"),
    { name: "AES-GCM" }, false, ["encrypt"]);
  const enc = new TextEncoder();
  const box = new Uint8Array(await subtle().encrypt(
    { name: "AES-GCM", iv, additionalData: enc.encode("keywire-ice-v2:" + clientUfrag), tagLength: 128 },
    key, enc.encode(clientPwd)));
  const out = new Uint8Array(iv.length + box.length);
  out.set(iv);
  out.set(box, iv.length);
  return b64nopad(out);
}

/** The `a=ice-ufrag` / `a=ice-pwd` of an SDP (read, never changed). */
export function iceCredentials(sdp) {
  const ufrag = /^a=ice-ufrag:(\S+)\s*$/m.exec(sdp)?.[1];
  const pwd = /^a=ice-pwd:(\S+)\s*$/m.exec(sdp)?.[1];
  if (!ufrag || !pwd) throw new DialError("the browser's offer has no ICE ufrag/password");
  return { ufrag, pwd };
}

export function randomUfrag() {
  const bytes = crypto.getRandomValues(new Uint8Array(9));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The server's answer exactly as KPS §2.5 synthesizes it. */
export function serverAnswer(host, port, ufrag, pwd, digest) {
  const v6 = host.includes(":");
  const fam = v6 ? "IP6" : "IP4";
  const fp = Array.from(digest, (b) => b.toString(16).toUpperCase().padStart(2, "0")).join(":");
  return [
    "v=0", `o=- 0 0 IN ${fam} ${v6 ? "::" : "0.0.0.0"}`, "s=-", "t=0 0", "a=ice-lite",
    `m=application ${port} UDP/DTLS/SCTP webrtc-datachannel`, `c=IN ${fam} ${host}`, "a=mid:0",
    `a=ice-ufrag:${ufrag}`, `a=ice-pwd:${pwd}`, `a=fingerprint:sha-256 ${fp}`, "a=setup:passive",
    "a=sctp-port:5000", "a=max-message-size:1048576",
    `a=candidate:1 1 UDP 1 ${host} ${port} typ host`,
  ].join("\r\n") + "\r\n";
}

function mungeCredentials(sdp, ufrag, pwd) {
  return sdp.split(/\r?\n/).map((line) => {
    if (line.startsWith("a=ice-ufrag:")) return `a=ice-ufrag:${ufrag}`;
    if (line.startsWith("a=ice-pwd:")) return `a=ice-pwd:${pwd}`;
    return line;
  }).join("\r\n");
}

// -- frames ----------------------------------------------------------------------------------
class WireError extends Error {}

function u32(code) {
  const b = new Uint8Array(5);
  new DataView(b.buffer).setUint32(1, code >>> 0);
  return b;
}

function u64Frame(type, value) {
  const b = new Uint8Array(9);
  b[0] = type;
  new DataView(b.buffer).setBigUint64(1, BigInt(value));
  return b;
}

function readU64(bytes, what) {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getBigUint64(1);
  if (v > MAX_OFFSET) throw new WireError(`${what} value above 2^62-1`);
  return Number(v > BigInt(Number.MAX_SAFE_INTEGER) ? BigInt(Number.MAX_SAFE_INTEGER) : v);
}

function frameOf(type, payload) {
  const b = new Uint8Array(1 + payload.length);
  b[0] = type;
  b.set(payload, 1);
  return b;
}

function decodeStreamFrame(m) {
  if (m.length === 0) throw new WireError("empty stream frame");
  if (m.length > MAX_FRAME) throw new WireError(`stream frame of ${m.length} bytes`);
  const need = (n, name) => {
    if (m.length !== n) throw new WireError(`${name} is ${n} bytes, got ${m.length}`);
  };
  const view = new DataView(m.buffer, m.byteOffset, m.byteLength);
  switch (m[0]) {
    case 0:
      if (m.length === 1) throw new WireError("DATA frame with an empty payload");
      return { type: "data", payload: m.subarray(1) };
    case 1: need(1, "FIN"); return { type: "fin" };
    case 2: need(5, "RESET"); return { type: "reset", code: view.getUint32(1) };
    case 3: need(5, "STOP_SENDING"); return { type: "stop", code: view.getUint32(1) };
    case 4: need(9, "MAX_STREAM_DATA"); return { type: "msd", value: readU64(m, "MAX_STREAM_DATA") };
    default: throw new WireError(`unknown stream frame type ${m[0]}`);
  }
}

function decodeControl(m) {
  if (m.length === 0) throw new WireError("empty control message");
  const view = new DataView(m.buffer, m.byteOffset, m.byteLength);
  const need = (n, name) => {
    if (m.length !== n) throw new WireError(`${name} is ${n} bytes, got ${m.length}`);
  };
  switch (m[0]) {
    case 0: need(5, "CONNECTION_CLOSE"); return { type: "close", code: view.getUint32(1) };
    case 1: {
      if (m.length < 2) throw new WireError("HELLO without a version");
      if (m[1] !== 1) return { type: "hello", version: m[1] };
      need(26, "HELLO");
      const field = (at, what) => {
        const v = view.getBigUint64(at);
        if (v > MAX_OFFSET) throw new WireError(`HELLO ${what} above 2^62-1`);
        return Number(v > BigInt(Number.MAX_SAFE_INTEGER) ? BigInt(Number.MAX_SAFE_INTEGER) : v);
      };
      return { type: "hello", version: 1, streamData: field(2, "initialMaxStreamData"),
        data: field(10, "initialMaxData"), streams: field(18, "initialMaxStreams") };
    }
    case 2: need(9, "MAX_DATA"); return { type: "maxData", value: readU64(m, "MAX_DATA") };
    case 3: need(9, "MAX_STREAMS"); return { type: "maxStreams", value: readU64(m, "MAX_STREAMS") };
    default: throw new WireError(`unknown control message type ${m[0]}`);
  }
}

function helloBytes(s) {
  const b = new Uint8Array(26);
  const v = new DataView(b.buffer);
  b[0] = 1;
  b[1] = 1;
  v.setBigUint64(2, BigInt(s.streamWindow));
  v.setBigUint64(10, BigInt(s.connectionWindow));
  v.setBigUint64(18, BigInt(s.maxStreams));
  return b;
}

// -- small async helpers ---------------------------------------------------------------------
function signal() {
  let resolve;
  const promise = new Promise((r) => { resolve = r; });
  return { promise, resolve };
}

// -- streams ---------------------------------------------------------------------------------
/** One KPS stream: a DCEP channel carrying 1-byte-type frames. */
export class KeywireStream {
  constructor(conn, channel, local) {
    this.id = channel.id;
    this._conn = conn;
    this._dc = channel;
    this.local = local;
    // sending half
    this._sendMax = conn._peerStreamWindow;
    this._sent = 0;
    this._sendEnd = null;
    this._stopCode = null;
    this._credit = signal();
    // receiving half
    this._recvMax = conn._settings.streamWindow;
    this._received = 0;
    this._consumed = 0;
    this._advertisedAt = 0;
    this._recvEnd = null;
    this._readStopped = false;
    this._chunks = [];
    this._readError = null;
    this._readWake = signal();
    this._retired = false;
    this._closing = false;
    this._channelGone = false;
    Object.assign(this, webStreams(this));
  }

  // reading: a pull source, so bytes count as consumed only when the application asks
  async _pull(controller) {
    for (;;) {
      if (this._chunks.length) {
        const chunk = this._chunks.shift();
        this._consumedBytes(chunk.length);
        controller.enqueue(chunk);
        return;
      }
      if (this._readError) { controller.error(this._readError); return; }
      if (this._recvEnd === "fin") { controller.close(); return; }
      await this._readWake.promise;
    }
  }

  _wakeReader() {
    const old = this._readWake;
    this._readWake = signal();
    old.resolve();
  }

  _consumedBytes(n) {
    if (n > 0) this._conn._consumed(this, n);
  }

  /** Send bytes, waiting for credit; throws StreamError after a stop or reset. */
  async write(chunk) {
    let data = chunk instanceof Uint8Array ? chunk : new Uint8Array(chunk);
    const conn = this._conn;
    while (data.length) {
      this._checkWritable();
      const grant = Math.min(data.length, this._sendMax - this._sent, conn._sendMax - conn._sent);
      if (grant <= 0) {
        await Promise.race([this._credit.promise, conn._ended.promise]);
        continue;
      }
      await this._waitOpen();
      this._checkWritable();
      for (let at = 0; at < grant; at += MAX_DATA) {
        conn._sendOn(this._dc, frameOf(0, data.subarray(at, Math.min(grant, at + MAX_DATA))));
      }
      this._sent += grant;
      conn._sent += grant;
      data = data.subarray(grant);
      if (this._dc.bufferedAmount > BUFFER_HIGH) await this._bufferLow();
    }
  }

  _checkWritable() {
    const conn = this._conn;
    if (conn._error) throw new StreamError(conn._streamCode(), `connection closed: ${conn._error.message}`, conn._error.remote);
    if (this._stopCode !== null) throw new StreamError(this._stopCode, "the peer asked to stop sending", true);
    if (this._sendEnd) throw new StreamError(Code.CLOSED, `write after ${this._sendEnd === "fin" ? "closeWrite" : "reset"}`);
  }

  _waitOpen() {
    if (this._dc.readyState === "open") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => resolve();
      this._dc.addEventListener("open", done, { once: true });
      this._dc.addEventListener("close", done, { once: true });
    });
  }

  _bufferLow() {
    return new Promise((resolve) => {
      this._dc.bufferedAmountLowThreshold = BUFFER_LOW;
      const done = () => resolve();
      this._dc.addEventListener("bufferedamountlow", done, { once: true });
      this._dc.addEventListener("close", done, { once: true });
    });
  }

  /** FIN: the peer reads EOF after what was written. */
  async closeWrite() {
    this._checkWritable();
    await this._waitOpen();
    this._checkWritable();  // a reset or STOP_SENDING may have come while the channel opened
    this._sendEnd = "fin";
    this._conn._sendOn(this._dc, new Uint8Array([1]));
    this._conn._maybeRetire(this);
  }

  /** Abandon the sending half; the peer's reads fail with `code`. */
  reset(code = Code.RESET) {
    if (this._conn._error || this._retired || this._sendEnd) return;
    this._sendEnd = "reset";
    this._sendFrame(frameOf(2, u32(code).subarray(1)));
    this._conn._maybeRetire(this);
  }

  /** Ask the peer to stop sending; local reads fail with `code`. */
  stopSending(code = Code.CANCELLED) {
    if (this._conn._error || this._retired || this._readStopped) return;
    this._readStopped = true;
    if (this._recvEnd === null) this._sendFrame(frameOf(3, u32(code).subarray(1)));
    if (!this._readError && this._recvEnd !== "fin") {
      this._readError = new StreamError(code, "reading was stopped locally");
    }
    const dropped = this._chunks.reduce((n, c) => n + c.length, 0);
    this._chunks = [];
    this._consumedBytes(dropped);
    this._wakeReader();
    this._conn._maybeRetire(this);
  }

  _sendFrame(frame) {
    if (this._dc.readyState === "open") this._conn._sendOn(this._dc, frame);
    else this._waitOpen().then(() => this._conn._sendOn(this._dc, frame));
  }

  // -- frames from the peer --------------------------------------------------------------
  _onMessage(bytes) {
    const conn = this._conn;
    let frame;
    try { frame = decodeStreamFrame(bytes); } catch (e) { conn._protocolError(`stream ${this.id}: ${e.message}`); return; }
    switch (frame.type) {
      case "data": {
        const n = frame.payload.length;
        if (this._recvEnd) return conn._protocolError(`stream ${this.id}: DATA after ${this._recvEnd.toUpperCase()}`);
        if (this._received + n > this._recvMax) return conn._protocolError(`stream ${this.id}: stream credit exceeded`);
        if (conn._received + n > conn._recvMax) return conn._protocolError("connection credit exceeded");
        this._received += n;
        conn._received += n;
        if (this._readStopped) { this._consumedBytes(n); return; }
        this._chunks.push(frame.payload.slice());
        this._wakeReader();
        return;
      }
      case "fin":
      case "reset":
        if (this._recvEnd) return conn._protocolError(`stream ${this.id}: ${frame.type.toUpperCase()} after ${this._recvEnd.toUpperCase()}`);
        this._recvEnd = frame.type;
        if (frame.type === "reset") {
          if (!this._readError) this._readError = new StreamError(frame.code, "the peer reset the stream", true);
          const dropped = this._chunks.reduce((s, c) => s + c.length, 0);
          this._chunks = [];
          this._consumedBytes(dropped);
        }
        this._wakeReader();
        conn._maybeRetire(this);
        return;
      case "stop":
        if (this._stopCode !== null) return;
        this._stopCode = frame.code;
        this._wakeWriter();
        if (!this._sendEnd) {
          this._sendEnd = "reset";
          this._sendFrame(frameOf(2, u32(frame.code).subarray(1)));
          conn._maybeRetire(this);
        }
        return;
      case "msd":
        if (frame.value > this._sendMax) { this._sendMax = frame.value; this._wakeWriter(); }
        return;
    }
  }

  _wakeWriter() {
    const old = this._credit;
    this._credit = signal();
    old.resolve();
  }

  _fail(error) {
    if (!this._readError && this._recvEnd !== "fin") this._readError = error;
    this._wakeReader();
    this._wakeWriter();
  }
}

// -- connections -----------------------------------------------------------------------------
/** A KPS connection over WebRTC data channels. */
export class KeywireConnection {
  constructor(pc, control, datagramChannel, address, settings) {
    this.address = address;
    this.maxDatagramSize = MAX_DATAGRAM_SIZE;
    this._pc = pc;
    this._control = control;
    this._dgc = datagramChannel;
    this._settings = settings;
    this._streams = new Map();
    this._incoming = [];
    this._acceptWake = signal();
    this._openWake = signal();
    this._ended = signal();
    this._ready = signal();
    this._error = null;
    this._localClose = false;
    this._helloSent = false;
    this._helloReceived = false;
    // credit the peer grants us
    this._peerStreamWindow = 0;
    this._sendMax = 0;
    this._sent = 0;
    this._peerMaxStreams = 0;
    this._opened = 0;
    // credit we grant the peer
    this._recvMax = settings.connectionWindow;
    this._received = 0;
    this._consumedTotal = 0;
    this._advertisedAt = 0;
    this._maxPeerStreams = settings.maxStreams;
    this._peerOpened = 0;
    this._retiredPeer = 0;
    // datagrams: bounded, drop-oldest
    this._dgQueue = [];
    this._dgWake = signal();
    this.datagramsDropped = 0;
    this.datagrams = new ReadableStream({
      pull: async (controller) => {
        try { controller.enqueue(await this.receiveDatagram()); } catch (e) { controller.error(e); }
      },
    }, { highWaterMark: 0 });
    /** Resolves with the ConnectionClosedError that ended the connection. */
    this.closed = this._ended.promise.then(() => this._error);
  }

  /** Why the connection ended (null while open). */
  get error() { return this._error; }
  /** The close code (null while open). */
  get closeCode() { return this._error ? this._error.code : null; }

  _wire() {
    const control = this._control;
    control.binaryType = "arraybuffer";
    const onOpen = () => this._sendHello();
    if (control.readyState === "open") onOpen(); else control.addEventListener("open", onOpen, { once: true });
    control.addEventListener("message", (e) => this._onControl(e.data));
    control.addEventListener("close", () => this._reservedLost(0));
    this._dgc.binaryType = "arraybuffer";
    this._dgc.addEventListener("message", (e) => this._onDatagram(e.data));
    this._dgc.addEventListener("close", () => this._reservedLost(1));
    this._pc.addEventListener("datachannel", (e) => this._onChannel(e.channel));
    this._pc.addEventListener("connectionstatechange", () => {
      const state = this._pc.connectionState;
      if (state === "failed" || state === "closed") this._terminate(new ConnectionClosedError(Code.NETWORK_ERROR, `peer connection ${state}`), false);
    });
  }

  _sendHello() {
    if (this._helloSent || this._error) return;
    this._helloSent = true;
    this._sendControl(helloBytes(this._settings));
    this._checkReady();
  }

  _checkReady() {
    if (this._helloSent && this._helloReceived) this._ready.resolve();
  }

  _sendControl(bytes) {
    if (this._control.readyState === "open") this._control.send(bytes);
  }

  _sendOn(dc, bytes) {
    if (dc.readyState === "open" && !this._error) dc.send(bytes);
  }

  _onControl(data) {
    if (this._error) return;
    if (typeof data === "string") return this._protocolError("text message on the control channel");
    let msg;
    try { msg = decodeControl(new Uint8Array(data)); } catch (e) { return this._protocolError(`control channel: ${e.message}`); }
    if (msg.type === "close") return this._terminate(new ConnectionClosedError(msg.code, "peer closed the connection", true), false);
    if (msg.type === "hello") {
      if (this._helloReceived) return this._protocolError("duplicate HELLO");
      if (msg.version !== 1) {
        this._sendControl(u32(Code.UNSUPPORTED));
        return this._terminate(new ConnectionClosedError(Code.UNSUPPORTED, `peer speaks wire version ${msg.version}`), true);
      }
      this._helloReceived = true;
      this._peerStreamWindow = msg.streamData;
      this._sendMax = msg.data;
      this._peerMaxStreams = msg.streams;
      for (const s of this._streams.values()) s._sendMax = Math.max(s._sendMax, msg.streamData);
      this._checkReady();
      return;
    }
    if (!this._helloReceived) return this._protocolError(`${msg.type} before HELLO`);
    if (msg.type === "maxData" && msg.value > this._sendMax) {
      this._sendMax = msg.value;
      for (const s of this._streams.values()) s._wakeWriter();
    } else if (msg.type === "maxStreams" && msg.value > this._peerMaxStreams) {
      this._peerMaxStreams = msg.value;
      const old = this._openWake; this._openWake = signal(); old.resolve();
    }
  }

  _onChannel(dc) {
    if (this._error) return;
    const id = dc.id;
    if (id === 0 || id === 1) return this._protocolError(`peer opened reserved channel ${id}`);
    if (id % 2 === 0) return this._protocolError(`peer opened channel ${id}, which has this side's parity`);
    if (this._streams.has(id)) return this._protocolError(`peer reopened channel ${id}`);
    this._peerOpened += 1;
    if (this._peerOpened > this._maxPeerStreams) return this._protocolError("peer exceeded the stream limit");
    const stream = this._attach(dc, false);
    this._incoming.push(stream);
    const old = this._acceptWake; this._acceptWake = signal(); old.resolve();
  }

  _attach(dc, local) {
    dc.binaryType = "arraybuffer";
    const stream = new KeywireStream(this, dc, local);
    this._streams.set(dc.id, stream);
    dc.addEventListener("message", (e) => {
      if (this._error) return;
      if (typeof e.data === "string") return this._protocolError(`text message on stream ${dc.id}`);
      stream._onMessage(new Uint8Array(e.data));
    });
    dc.addEventListener("close", () => this._channelClosed(stream));
    return stream;
  }

  _channelClosed(stream) {
    if (this._streams.get(stream.id) === stream) this._streams.delete(stream.id);
    if (this._error) return;
    if (!(stream._sendEnd && stream._recvEnd)) return this._protocolError(`stream ${stream.id} closed before both halves ended`);
    stream._channelGone = true;
    this._maybeRetire(stream);
  }

  _reservedLost(id) {
    if (!this._error && this._pc.connectionState !== "closed") this._protocolError(`reserved channel ${id} closed`);
  }

  _onDatagram(data) {
    if (this._error || typeof data === "string") return;
    if (this._dgQueue.length >= 256) { this._dgQueue.shift(); this.datagramsDropped += 1; }
    this._dgQueue.push(new Uint8Array(data));
    const old = this._dgWake; this._dgWake = signal(); old.resolve();
  }

  _consumed(stream, n) {
    if (this._error) return;
    this._consumedTotal += n;
    const s = this._settings;
    if (this._consumedTotal - this._advertisedAt >= s.connectionWindow / 2) {
      this._advertisedAt = this._consumedTotal;
      this._recvMax = this._consumedTotal + s.connectionWindow;
      this._sendControl(u64Frame(2, this._recvMax));
    }
    stream._consumed += n;
    if (!stream._recvEnd && !stream._readStopped && !stream._channelGone
        && stream._consumed - stream._advertisedAt >= s.streamWindow / 2) {
      stream._advertisedAt = stream._consumed;
      stream._recvMax = stream._consumed + s.streamWindow;
      this._sendOn(stream._dc, u64Frame(4, stream._recvMax));
    }
    this._maybeRetire(stream);
  }

  _maybeRetire(stream) {
    if (stream._closing || stream._retired || this._error) return;
    if (!(stream._sendEnd && stream._recvEnd)) return;
    if (stream._chunks.length || stream._consumed < stream._received) return;
    stream._closing = true;
    if (!stream._channelGone) stream._dc.close();
    stream._retired = true;
    if (!stream.local) {
      this._retiredPeer += 1;
      this._maxPeerStreams = this._settings.maxStreams + this._retiredPeer;
      this._sendControl(u64Frame(3, this._maxPeerStreams));
    }
  }

  _streamCode() {
    if (this._localClose || this._error.code === 0) return Code.CLOSED;
    return this._error.code;
  }

  _protocolError(reason) {
    if (this._error) return;
    this._sendControl(u32(Code.PROTOCOL_ERROR));
    this._terminate(new ConnectionClosedError(Code.PROTOCOL_ERROR, reason), true);
  }

  _terminate(error, flush) {
    if (this._error) return;
    this._error = error;
    const code = this._streamCode();
    for (const s of this._streams.values()) s._fail(new StreamError(code, `connection ended: ${error.message}`, error.remote));
    this._acceptWake.resolve();
    this._openWake.resolve();
    this._dgWake.resolve();
    this._ended.resolve();
    this._teardown = this._closePc(flush);
  }

  async _closePc(flush) {
    if (flush && this._control.readyState === "open") {
      const deadline = performance.now() + 250;
      while (this._control.bufferedAmount > 0 && performance.now() < deadline) {
        await new Promise((r) => setTimeout(r, 10));
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    this._pc.close();
  }

  // -- public API ------------------------------------------------------------------------
  /** A new outgoing stream (waits while the peer's MAX_STREAMS is reached). */
  async openStream() {
    for (;;) {
      if (this._error) throw this._error;
      if (this._opened < this._peerMaxStreams) {
        this._opened += 1;
        const dc = this._pc.createDataChannel(`kps-${this._opened}`, { ordered: true });
        return this._attach(dc, true);
      }
      await this._openWake.promise;
    }
  }

  /** The next stream the peer opened; throws the close error once the connection ends. */
  async acceptStream() {
    for (;;) {
      if (this._incoming.length) return this._incoming.shift();
      if (this._error) throw this._error;
      await this._acceptWake.promise;
    }
  }

  /** One unreliable datagram of at most `maxDatagramSize` bytes. */
  sendDatagram(data) {
    if (this._error) throw this._error;
    const bytes = datagramBytes(data, MAX_DATAGRAM_SIZE);
    if (this._dgc.readyState === "open") this._dgc.send(bytes);
  }

  /** The oldest queued datagram. */
  async receiveDatagram() {
    for (;;) {
      if (this._dgQueue.length) return this._dgQueue.shift();
      if (this._error) throw this._error;
      await this._dgWake.promise;
    }
  }

  /** Close with a code (0 clean); the peer sees the code. */
  async close(code = Code.NONE, reason = "closed locally") {
    if (!this._error) {
      this._localClose = true;
      if (this._helloSent) this._sendControl(u32(code));
      this._terminate(new ConnectionClosedError(code, reason), true);
    }
    await this._teardown;
  }
}

/**
 * Dial a KPS address over WebRTC-direct; resolves once HELLO has been exchanged. A multiaddress
 * (`;`-separated) offering a `webtransport:` alternative is dialed over WebTransport instead
 * where the browser has it (./webtransport.js, loaded then), with the same connection API.
 * Options: `timeout` (ms, default 15000), `signal` (AbortSignal), `streamWindow`,
 * `connectionWindow`, `maxStreams`, `wire` (2, default: keywire wire v2, the browser's offer is
 * never edited; 1: KPS wire v1 for KPS servers, which munges the offer and fails in browsers
 * that forbid it).
 */
export async function dial(address, options = {}) {
  // a multiaddress may offer `webtransport:` (docs/webtransport.md) beside the KPS address:
  // WebTransport where this browser has it, WebRTC otherwise
  const alternatives = String(address).split(";").map((a) => a.trim()).filter((a) => a);
  const wt = alternatives.find((a) => a.startsWith("webtransport:"));
  if (wt && typeof globalThis.WebTransport === "function") {
    return (await import("./webtransport.js")).dialWebTransport(wt, options);
  }
  if (wt) {
    address = alternatives.find((a) => !a.startsWith("webtransport:"));
    if (!address) throw new DialError("this browser has no WebTransport and the address offers nothing else");
  }
  const { host, port, certhash, digest } = parseAddress(address);
  const settings = { ...DEFAULTS };
  for (const k of Object.keys(DEFAULTS)) if (options[k] !== undefined) settings[k] = options[k];
  const timeout = options.timeout ?? 15000;
  const wire = options.wire ?? 2;
  if (wire !== 1 && wire !== 2) throw new DialError(`wire must be 1 or 2, got ${wire}`);
  subtle();
  const pc = new RTCPeerConnection({ iceServers: [] });
  const control = pc.createDataChannel("_kps_control", { negotiated: true, id: 0 });
  const datagrams = pc.createDataChannel("_kps_datagrams",
    { negotiated: true, id: 1, ordered: false, maxRetransmits: 0 });
  const conn = new KeywireConnection(pc, control, datagrams,
    `kps:${host.includes(":") ? `[${host}]` : host}:${port}:${certhash}`, settings);
  conn._wire();
  let timer;
  const onAbort = () => conn._terminate(new ConnectionClosedError(Code.CANCELLED, "dial aborted"), false);
  options.signal?.addEventListener("abort", onAbort, { once: true });
  try {
    const offer = await pc.createOffer();
    let serverUfrag, serverPwd;
    if (wire === 2) {
      // the offer goes in untouched; our own password reaches the server inside its ufrag
      const own = iceCredentials(offer.sdp);
      serverUfrag = await sealServerUfrag(digest, own.ufrag, own.pwd);
      serverPwd = await deriveIcePasswordV2(digest, serverUfrag);
      await pc.setLocalDescription(offer);
    } else {
      serverUfrag = randomUfrag();
      serverPwd = await deriveIcePassword(digest, serverUfrag);
      await pc.setLocalDescription({ type: "offer", sdp: mungeCredentials(offer.sdp, serverUfrag, serverPwd) });
    }
    await pc.setRemoteDescription({ type: "answer", sdp: serverAnswer(host, port, serverUfrag, serverPwd, digest) });
    const expired = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new DialError(
        `dial ${host}:${port} timed out after ${timeout} ms (ICE ${pc.iceConnectionState}, ` +
        `connection ${pc.connectionState}: a wrong certhash gets no answer` +
        `${wire === 2 ? ", and so does a KPS server that speaks only wire v1: try {wire: 1}" : ""})`, Code.TIMEOUT)), timeout);
    });
    const ended = conn._ended.promise.then(() => {
      throw new DialError(`dial ${host}:${port} failed: ${conn._error.message}`, conn._error.code);
    });
    await Promise.race([conn._ready.promise, expired, ended]);
    return conn;
  } catch (e) {
    conn._terminate(new ConnectionClosedError(Code.CANCELLED, "dial failed"), false);
    throw e instanceof DialError ? e : new DialError(`dial ${host}:${port} failed: ${e.message}`);
  } finally {
    clearTimeout(timer);
    options.signal?.removeEventListener("abort", onAbort);
  }
}
