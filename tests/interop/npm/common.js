// Shared by keywire's npm interop harness scripts: configuration from the environment and the
// deterministic payload both sides of an echo test compute.
'use strict'
const crypto = require('crypto')
const chloride = require('chloride')

function b64 (name, fallback) {
  const text = process.env[name]
  if (!text) return fallback
  const raw = Buffer.from(text, 'base64')
  if (raw.length !== 32) throw new Error(name + ' must be base64 of 32 bytes')
  return raw
}

// KW_APP_KEY: the shs network key (base64); KW_SEED: this peer's Ed25519 seed (base64)
exports.appKey = () => b64('KW_APP_KEY', Buffer.from('1KHLiKZvAvjbY1ziZEHMXawbCEIM6qwjCDm3VYRan/s=', 'base64'))
exports.keys = () => chloride.crypto_sign_seed_keypair(b64('KW_SEED', crypto.randomBytes(32)))

// SHAKE128 of a fixed label: the same bytes in Python (hashlib.shake_128) without a pattern
// that repeats at frame boundaries
exports.payload = (n) => crypto.createHash('shake128', { outputLength: n }).update('keywire-interop').digest()

exports.emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
