// A KPS-style QUIC peer on @infisical/quic 1.0.8 (Cloudflare quiche through napi), the QUIC stack
// of KPS's JS packages: ALPN h3, datagrams on (enableDgram [true, 1000, 1000], as KPS sets it),
// the server identified only by the SHA-256 of its leaf certificate.
//
//   node quiche_peer.js server --cert CERT.pem --key KEY.pem [--lifetime S]
//     Listens on 127.0.0.1:0 and prints the port alone on the first stdout line; then one JSON
//     line per event (connection: the SNI the client sent, the ALPN, quiche's datagram limit;
//     stream-echoed; connection-error, with the QUIC error code; datagram-echo-failed). Echoes every stream (reads to EOF, writes it back, FIN) and every
//     datagram. Exits on SIGTERM, when stdin closes, or after --lifetime seconds (default 60).
//
//   node quiche_peer.js client --host H --port P --sha256 HEX [--streams N] [--size BYTES]
//                              [--datagram TEXT] [--timeout S]
//     Dials H:P; the custom verification callback accepts the server only if sha256(leaf DER)
//     equals HEX. Opens N streams, each sends SIZE bytes (window i of the shared SHAKE128
//     payload, see common.js) then FIN, and checks the echo byte for byte; then sends TEXT as a
//     datagram (repeated every 100 ms) until it comes back. Prints one JSON line; exit 0 iff
//     everything matched. Every wait is bounded by --timeout (default 20 s).
//
// @infisical/quic's JS layer has no datagram API; datagrams go through the native quiche
// connection it wraps (`QUICConnection.conn`: dgramSend / dgramRecvVec / dgramMaxWritableLen),
// flushed with the connection's own send().
'use strict'
const crypto = require('crypto')
const fs = require('fs')
const { QUICClient, QUICServer, events, native } = require('@infisical/quic')
const { default: Logger, LogLevel, StreamHandler } = require('@matrixai/logger')
const { payload, emit } = require('./common')

const ALPN = ['h3']
const DGRAM = [true, 1000, 1000]
const CHUNK = 64 * 1024

function options (argv) {
  const out = {}
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || i + 1 >= argv.length) throw new Error('bad argument ' + argv[i])
    out[argv[i].slice(2)] = argv[i + 1]
  }
  return out
}

function logger () {
  const level = process.env.KW_QUIC_DEBUG ? LogLevel.DEBUG : LogLevel.ERROR
  return new Logger('quiche_peer', level, [new StreamHandler()])
}

function deadline (ms, what) {
  let timer
  const p = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(what + ' timed out after ' + ms + ' ms')), ms)
  })
  return { p, clear: () => clearTimeout(timer) }
}

async function bounded (promise, ms, what) {
  const d = deadline(ms, what)
  try { return await Promise.race([promise, d.p]) } finally { d.clear() }
}

async function readAll (readable) {
  const parts = []
  for await (const chunk of readable) parts.push(Buffer.from(chunk))
  return Buffer.concat(parts)
}

async function writeAll (writable, data) {
  const writer = writable.getWriter()
  for (let at = 0; at < data.length; at += CHUNK) await writer.write(data.subarray(at, at + CHUNK))
  await writer.close() // FIN
}

// flush what quiche has queued (the library does this itself after stream writes)
function flush (connection) {
  connection.send().catch(() => {})
}

function describe (e) {
  return (e && (e.message || (e.constructor && e.constructor.name))) || String(e)
}

function hmac (key, data) {
  return crypto.createHmac('sha256', Buffer.from(key)).update(Buffer.from(data)).digest()
}

// ---- server -------------------------------------------------------------------------------------

async function echoStream (stream) {
  try {
    const data = await readAll(stream.readable)
    await writeAll(stream.writable, data)
    emit({ event: 'stream-echoed', stream: stream.streamId, bytes: data.length })
  } catch (e) {
    emit({ event: 'stream-error', stream: stream.streamId, message: String(e && e.message) })
  }
}

function echoDatagrams (connection) {
  const conn = connection.conn
  const timer = setInterval(() => {
    if (conn.isClosed()) return clearInterval(timer)
    let got = false
    for (let data; (data = conn.dgramRecvVec()) != null;) {
      got = true
      try {
        conn.dgramSend(data)
      } catch (e) {
        emit({ event: 'datagram-echo-failed', size: data.length, limit: conn.dgramMaxWritableLen(), message: String(e && e.message) })
      }
    }
    if (got) flush(connection)
  }, 2)
  connection.closedP.finally(() => clearInterval(timer))
}

async function server (opts) {
  const key = crypto.randomBytes(32)
  const srv = new QUICServer({
    crypto: {
      key,
      ops: {
        // the library derives connection ids and Retry tokens with these (HMAC-SHA256)
        sign: async (k, data) => new Uint8Array(hmac(k, data)).buffer,
        verify: async (k, data, sig) => {
          const want = hmac(k, data)
          const got = Buffer.from(sig)
          return got.length === want.length && crypto.timingSafeEqual(got, want)
        }
      }
    },
    config: {
      cert: fs.readFileSync(opts.cert, 'utf8'),
      key: fs.readFileSync(opts.key, 'utf8'),
      applicationProtos: ALPN,
      enableDgram: DGRAM,
      verifyPeer: false,
      maxIdleTimeout: 30000,
      readableChunkSize: CHUNK
    },
    logger: logger()
  })
  srv.addEventListener(events.EventQUICServerConnection.name, (evt) => {
    const connection = evt.detail
    const conn = connection.conn
    emit({
      event: 'connection',
      sni: conn.serverName(),
      alpn: Buffer.from(conn.applicationProto()).toString(),
      dgram_max_writable: conn.dgramMaxWritableLen(),
      remote: connection.remoteHost + ':' + connection.remotePort
    })
    connection.addEventListener(events.EventQUICConnectionStream.name, (e) => { echoStream(e.detail) })
    echoDatagrams(connection)
  })
  // the server re-dispatches its connections' events, handshakes that fail included
  srv.addEventListener(events.EventQUICConnectionError.name, (evt) => {
    const error = evt.detail
    const data = error && error.data
    emit({
      event: 'connection-error',
      type: error && error.constructor.name,
      message: String(error && error.message),
      code: data && typeof data.errorCode === 'number' ? data.errorCode : null
    })
  })
  srv.addEventListener(events.EventQUICServerError.name, (evt) => {
    emit({ event: 'server-error', message: String(evt.detail && evt.detail.message) })
  })
  await srv.start({ host: '127.0.0.1', port: 0 })
  process.stdout.write(srv.port + '\n')
  let stopping = false
  const stop = async () => {
    if (stopping) return
    stopping = true
    const d = deadline(1000, 'stop')
    await Promise.race([srv.stop({ force: true }), d.p]).catch(() => {})
    process.exit(0)
  }
  process.on('SIGTERM', stop)
  process.stdin.on('end', stop)
  process.stdin.resume()
  setTimeout(stop, 1000 * Number(opts.lifetime || 60)).unref()
}

// ---- client -------------------------------------------------------------------------------------

async function client (opts) {
  const timeoutMs = 1000 * Number(opts.timeout || 20)
  const pin = Buffer.from(opts.sha256 || '', 'hex')
  if (pin.length !== 32) throw new Error('--sha256 must be 64 hex digits')
  const streams = Number(opts.streams || 1)
  const size = Number(opts.size || 1000)
  const result = { ok: false, handshake: false }
  let presented = null
  let quicClient
  try {
    quicClient = await QUICClient.createQUICClient({
      host: opts.host,
      port: Number(opts.port),
      localHost: opts.host.includes(':') ? '::' : '0.0.0.0',
      crypto: { ops: { randomBytes: async (buf) => { crypto.randomFillSync(new Uint8Array(buf)) } } },
      config: {
        applicationProtos: ALPN,
        enableDgram: DGRAM,
        verifyPeer: true,
        // the pin (quiche's own chain check may fail: with a callback the library lets it).
        // The library calls this once quiche reports the TLS handshake complete (our Finished
        // is already sent) and before it declares the connection established; a returned
        // alert closes the connection with it as CRYPTO_ERROR, before any stream is opened
        verifyCallback: async (certs) => {
          presented = certs.length ? crypto.createHash('sha256').update(certs[0]).digest() : null
          const good = presented != null && crypto.timingSafeEqual(presented, pin)
          return good ? undefined : native.CryptoError.BadCertificate
        },
        maxIdleTimeout: timeoutMs,
        readableChunkSize: CHUNK
      },
      logger: logger()
    }, { timer: timeoutMs })
  } catch (e) {
    result.error = describe(e)
    result.presented_sha256 = presented && presented.toString('hex')
    emit(result)
    return 1
  }
  const connection = quicClient.connection
  const conn = connection.conn
  result.handshake = true
  result.presented_sha256 = presented && presented.toString('hex')
  result.alpn = Buffer.from(conn.applicationProto()).toString()
  result.dgram_max_writable = conn.dgramMaxWritableLen()
  try {
    const whole = payload(size + streams)
    const checks = []
    for (let i = 0; i < streams; i++) {
      const stream = connection.newStream('bidi')
      const sent = whole.subarray(i, i + size)
      checks.push((async () => {
        const [, got] = await Promise.all([writeAll(stream.writable, sent), readAll(stream.readable)])
        return got.equals(sent)
      })())
    }
    const same = await bounded(Promise.all(checks), timeoutMs, 'stream echo')
    result.streams_ok = same.filter(Boolean).length
    if (opts.datagram != null) {
      const text = Buffer.from(opts.datagram)
      result.datagram_ok = await datagramEcho(connection, text, Date.now() + timeoutMs)
    }
    result.ok = result.streams_ok === streams && result.datagram_ok !== false
  } catch (e) {
    result.error = describe(e)
  } finally {
    await bounded(quicClient.destroy({ isApp: true, errorCode: 0, force: true }), 3000, 'close').catch(() => {})
  }
  emit(result)
  return result.ok ? 0 : 1
}

// true once the datagram came back, false if it did not before `until` (ms since the epoch)
async function datagramEcho (connection, text, until) {
  const conn = connection.conn
  while (Date.now() < until) {
    conn.dgramSend(text)
    flush(connection)
    for (let i = 0; i < 50; i++) {
      await new Promise((resolve) => setTimeout(resolve, 2))
      for (let data; (data = conn.dgramRecvVec()) != null;) {
        if (Buffer.from(data).equals(text)) return true
      }
    }
  }
  return false
}

// ---- main ---------------------------------------------------------------------------------------

async function main () {
  const [mode, ...rest] = process.argv.slice(2)
  const opts = options(rest)
  if (mode === 'server') return server(opts)
  if (mode === 'client') process.exit(await client(opts))
  throw new Error('usage: quiche_peer.js server|client --option value ...')
}

main().catch((e) => {
  emit({ ok: false, error: String(e && e.stack) })
  process.exit(2)
})
