"""Link: reach a host behind NAT through a content-blind relay.

The pieces, bottom up: pairing codes (``codes``), SPAKE2 (``spake2``) and Noise (``noise``)
cores, Link's byte layouts (``wire``), the pairing and reconnect handshakes (``handshake``),
the sealed channel (``sealed``), the relay server (``relay``), and the asyncio host/client
(``host``, ``client``) that give a normal keywire ``Connection``.
"""
