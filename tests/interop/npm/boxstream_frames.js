// Encodes chunks with pull-box-stream 1.0.13 so keywire's tests can compare frames byte for byte.
// argv: KEY_HEX NONCE_HEX CHUNK_HEX... (an empty string is an empty chunk). Prints the whole
// encrypted stream, goodbye included, as one hex line.
'use strict'
const pull = require('pull-stream')
const boxes = require('pull-box-stream')

const [keyHex, nonceHex, ...chunks] = process.argv.slice(2)
pull(
  pull.values(chunks.map((c) => Buffer.from(c, 'hex'))),
  boxes.createBoxStream(Buffer.from(keyHex, 'hex'), Buffer.from(nonceHex, 'hex')),
  pull.collect((err, parts) => {
    if (err) throw err
    process.stdout.write(Buffer.concat(parts).toString('hex') + '\n')
  })
)
