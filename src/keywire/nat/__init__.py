"""NAT traversal: STUN to learn this machine's public address and how its NAT maps and filters,
and ``keywire doctor``, which reports it (docs/nat.md)."""
