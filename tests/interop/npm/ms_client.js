// A multiserver 3.8.2 client: dials the address in argv[2] with net~shs and ws~shs plugs
// (KW_PLUGS=ws or net keeps only one), sends KW_BYTES bytes of the shared payload, reads the
// echo back in full before ending its side (WebSocket has no half-close), and checks it.
// Prints one JSON line: {"ok": true, "remote": ..., "bytes": N, "ms": T} or {"ok": false, "error": ...}.
'use strict'
const pull = require('pull-stream')
const MultiServer = require('multiserver')
const Net = require('multiserver/plugins/net')
const WS = require('multiserver/plugins/ws')
const Shs = require('multiserver/plugins/shs')
const { appKey, keys, payload, emit } = require('./common')

const address = process.argv[2]
const size = parseInt(process.env.KW_BYTES || '1000', 10)
const only = process.env.KW_PLUGS || ''
const chunkSize = 65536

const shs = Shs({ keys: keys(), appKey: appKey(), timeout: 5000, auth: () => {} })
const plugs = []
if (only !== 'ws') plugs.push([Net({}), shs])
if (only !== 'net') plugs.push([WS({}), shs])
const ms = MultiServer(plugs)
const expected = payload(size)
const started = Date.now()

function fail (message) {
  emit({ ok: false, error: message })
  process.exit(1)
}

const timer = setTimeout(() => fail('timed out'), parseInt(process.env.KW_TIMEOUT_MS || '60000', 10))

ms.client(address, (err, stream) => {
  if (err) return fail(String(err.message || err))
  let sent = 0
  let received = 0
  const got = []
  let finishSource = null
  const source = (abort, cb) => {
    if (abort) return cb(abort)
    if (sent < size) {
      const chunk = expected.subarray(sent, Math.min(size, sent + chunkSize))
      sent += chunk.length
      return cb(null, chunk)
    }
    // end our side only once the whole echo is back
    if (received >= size) return cb(true)
    finishSource = () => cb(true)
  }
  pull(source, stream, pull.drain((chunk) => {
    got.push(chunk)
    received += chunk.length
    if (received >= size && finishSource) { const f = finishSource; finishSource = null; f() }
  }, (end) => {
    clearTimeout(timer)
    const all = Buffer.concat(got)
    if (!all.equals(expected)) {
      const why = end && end !== true ? 'stream error: ' + (end.message || end) + '; ' : ''
      return fail(why + 'echo mismatch: got ' + all.length + ' of ' + size + ' bytes')
    }
    // Over ws our own goodbye closes the socket (no half-close), which can race the peer's
    // goodbye: with the whole echo in hand that hangup is the transport's, not a failure.
    let endNote = null
    if (end && end !== true) {
      if (!String(stream.address).startsWith('ws')) return fail('stream error: ' + (end.message || end))
      endNote = String(end.message || end)
    }
    emit({ ok: true, remote: stream.remote.toString('base64'), address: stream.address, bytes: size, ms: Date.now() - started, end: endNote })
    process.exit(0)
  }))
})
