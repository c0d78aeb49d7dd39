"""Byte-stream transports: TCP (net), Unix sockets, WebSocket (ws/wss) and Tor (onion)."""
