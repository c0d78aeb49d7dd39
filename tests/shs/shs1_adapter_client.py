"""shs1-test client adapter: ``ADAPTER NETWORK_ID_HEX SERVER_PK_HEX``.

The suite (npm ``shs1-test``'s ``shs1testclient``) plays the server over our stdin/stdout.
We dial with a fresh identity; on a misbehaving server we exit non-zero without writing
anything more; after a good handshake we write ``encKey‖encNonce‖decKey‖decNonce``.
"""

from __future__ import annotations

import secrets
import sys

from keywire.errors import HandshakeError
from keywire.shs.handshake import ShsClient


def main() -> int:
    app_key = bytes.fromhex(sys.argv[1])
    server_key = bytes.fromhex(sys.argv[2])
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    client = ShsClient(app_key, secrets.token_bytes(32), server_key)
    stdout.write(client.initiate())
    stdout.flush()
    try:
        while not client.done:
            data = stdin.read(client.bytes_needed)
            if not data:
                client.receive_eof()
            reply = client.receive_data(data)
            if reply:
                stdout.write(reply)
                stdout.flush()
    except HandshakeError:
        return 1
    stdout.write(client.keys.as_bytes())
    stdout.flush()
    while stdin.read(4096):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
