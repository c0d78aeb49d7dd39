// A multiserver 3.8.2 server on net and ws (both ~shs) on 127.0.0.1 that echoes every stream.
// Environment: KW_APP_KEY, KW_SEED (server identity), KW_ALLOW ('*' or comma-separated base64
// client keys). Prints one JSON line {"address": ...} when listening, then one JSON line per
// connection or handshake error; exits on SIGTERM or when stdin closes.
'use strict'
const http = require('http')
const net = require('net')
const pull = require('pull-stream')
const MultiServer = require('multiserver')
const Net = require('multiserver/plugins/net')
const WS = require('multiserver/plugins/ws')
const Shs = require('multiserver/plugins/shs')
const { appKey, keys, emit } = require('./common')

const allow = (process.env.KW_ALLOW || '*').split(',')

function freePort (cb) {
  const probe = net.createServer()
  probe.listen(0, '127.0.0.1', () => {
    const port = probe.address().port
    probe.close(() => cb(port))
  })
}

const wsServer = http.createServer()
wsServer.listen(0, '127.0.0.1', () => freePort((netPort) => {
  const shs = Shs({
    keys: keys(),
    appKey: appKey(),
    auth: (id, cb) => {
      const who = Buffer.from(id).toString('base64')
      const ok = allow.includes('*') || allow.includes(who)
      emit({ event: 'auth', remote: who, allowed: ok })
      cb(null, ok ? { id: who } : false)
    }
  })
  const ms = MultiServer([
    [Net({ host: '127.0.0.1', port: netPort }), shs],
    [WS({ host: '127.0.0.1', server: wsServer }), shs]
  ])
  const close = ms.server((stream) => {
    emit({ event: 'connect', remote: stream.remote.toString('base64'), address: stream.address })
    pull(stream, pull.through((chunk) => {}), stream)
  }, (err) => {
    emit({ event: 'error', message: String(err && err.message), address: err && err.address })
  }, (err) => {
    if (err) { emit({ event: 'fatal', message: String(err.message) }); process.exit(1) }
    emit({ address: ms.stringify('device'), net: 'net:127.0.0.1:' + netPort })
  })
  const stop = () => close(() => process.exit(0))
  process.on('SIGTERM', stop)
  process.stdin.on('end', stop)
  process.stdin.resume()
}))
