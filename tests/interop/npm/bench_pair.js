// The Node reference for bench/bench_shs.py: secret-handshake + box-stream over TCP
// (multiserver net~shs), one Node process sending and another receiving.
//   node bench_pair.js receive BYTES        -> prints {"address": ...}, then per connection
//                                              counts BYTES, answers "ok" and waits for the end
//   node bench_pair.js send ADDRESS BYTES   -> prints {"seconds": ...} (first byte to "ok")
// KW_APP_KEY / KW_SEED as in common.js.
'use strict'
const net = require('net')
const pull = require('pull-stream')
const MultiServer = require('multiserver')
const Net = require('multiserver/plugins/net')
const Shs = require('multiserver/plugins/shs')
const { appKey, keys, emit } = require('./common')

const [mode, ...rest] = process.argv.slice(2)

// a source that emits `first` chunks, then waits for `release()` before ending
function gatedSource (chunks) {
  let i = 0
  let waiting = null
  let open = false
  const source = (abort, cb) => {
    if (abort) return cb(abort)
    if (i < chunks.length) return cb(null, chunks[i++])
    if (open) return cb(true)
    waiting = cb
  }
  source.release = () => { open = true; if (waiting) { const w = waiting; waiting = null; w(true) } }
  return source
}

if (mode === 'receive') {
  const size = parseInt(rest[0], 10)
  const probe = net.createServer()
  probe.listen(0, '127.0.0.1', () => {
    const port = probe.address().port
    probe.close(() => {
      const shs = Shs({ keys: keys(), appKey: appKey(), auth: (id, cb) => cb(null, true) })
      const ms = MultiServer([[Net({ host: '127.0.0.1', port }), shs]])
      ms.server((stream) => {
        let got = 0
        const reply = gatedSource([])
        const ok = Buffer.from('ok')
        let sent = false
        const answer = (abort, cb) => {
          if (abort) return cb(abort)
          if (!sent && got >= size) { sent = true; return cb(null, ok) }
          if (sent) return reply(abort, cb)
          pending = cb
        }
        let pending = null
        pull(stream, pull.drain((chunk) => {
          got += chunk.length
          if (got >= size && pending) { const p = pending; pending = null; sent = true; p(null, ok) }
        }, () => reply.release()))
        pull(answer, stream)
      }, () => {}, (err) => {
        if (err) throw err
        emit({ address: ms.stringify('device') })
      })
      process.stdin.on('end', () => process.exit(0))
      process.stdin.resume()
    })
  })
} else if (mode === 'send') {
  const address = rest[0]
  const size = parseInt(rest[1], 10)
  const block = require('crypto').randomBytes(1 << 16)
  const shs = Shs({ keys: keys(), appKey: appKey(), auth: () => {} })
  const ms = MultiServer([[Net({}), shs]])
  ms.client(address, (err, stream) => {
    if (err) throw err
    const started = process.hrtime.bigint()
    let left = size
    const chunks = []
    while (left > 0) { const n = Math.min(left, block.length); chunks.push(block.subarray(0, n)); left -= n }
    const source = gatedSource(chunks)
    pull(source, stream, pull.drain((chunk) => {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9
      emit({ seconds })
      source.release()
      return false
    }, () => process.exit(0)))
  })
} else {
  console.error('usage: bench_pair.js receive BYTES | send ADDRESS BYTES')
  process.exit(2)
}
