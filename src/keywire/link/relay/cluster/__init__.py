"""A relay cluster: relay nodes that share a directory, register pins, per-IP windows and
quotas through ``state.ClusterState`` (``redis_state.RedisState``, or ``state.MemoryState`` in
one process) and splice a client to the node that holds its host (``node.ClusterRelayServer``).

Nothing is imported here, so ``keywire relay`` without ``--cluster`` never loads Redis.
"""
