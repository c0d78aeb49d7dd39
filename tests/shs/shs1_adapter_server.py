"""shs1-test server adapter: ``ADAPTER NETWORK_ID_HEX SERVER_SK_HEX SERVER_PK_HEX``.

The suite (npm ``shs1-test``'s ``shs1testserver``) plays the client over our stdin/stdout.
On a misbehaving client we exit non-zero without writing anything more; after a good
handshake we write msg4 and ``encKey‖encNonce‖decKey‖decNonce`` and wait to be killed.
"""

from __future__ import annotations

import sys

from keywire.errors import HandshakeError
from keywire.shs.handshake import ShsServer


def main() -> int:
    app_key = bytes.fromhex(sys.argv[1])
    secret = bytes.fromhex(sys.argv[2])
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    server = ShsServer(app_key, secret[:32])
    try:
        while not server.awaiting_authorization:
            data = stdin.read(server.bytes_needed)
            if not data:
                server.receive_eof()
            reply = server.receive_data(data)
            if reply:
                stdout.write(reply)
                stdout.flush()
        stdout.write(server.authorize(True) + server.keys.as_bytes())
        stdout.flush()
    except HandshakeError:
        return 1
    while stdin.read(4096):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
