"""``--cluster`` and its companions for ``keywire relay`` (argparse only: imports nothing heavy,
so the CLI starts fast; Redis is loaded only when a node runs)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from ..config import RelayConfig
    from ..server import RelayServer
    from .node import ClusterConfig

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cluster",
        default=None,
        metavar="URL",
        help="run as one node of a relay cluster sharing this Redis (redis://, rediss://, "
        "redis+sentinel://H:P,H:P/NAME, ?cluster=1 for Redis Cluster) [LINK_CLUSTER]",
    )
    parser.add_argument(
        "--cluster-advertise",
        default=None,
        metavar="WS_URL",
        help="the ws:// URL other nodes reach this one at (default: --host and the port) "
        "[LINK_CLUSTER_ADVERTISE]",
    )
    parser.add_argument(
        "--cluster-secret",
        default=None,
        help="secret nodes authenticate each other with (default: a random one kept in "
        "Redis) [LINK_CLUSTER_SECRET]",
    )


def cluster_config(
    args: argparse.Namespace, env: Mapping[str, str] | None = None
) -> ClusterConfig | None:
    """The node's cluster settings, or None for a single-process relay."""
    from .node import ClusterConfig

    env = os.environ if env is None else env
    url = getattr(args, "cluster", None) or env.get("LINK_CLUSTER") or ""
    if not url:
        return None
    if urlsplit(url).scheme not in SCHEMES:
        raise ValueError(f"--cluster needs a redis:// or rediss:// URL, got {url!r}")
    advertise = getattr(args, "cluster_advertise", None) or env.get("LINK_CLUSTER_ADVERTISE")
    if advertise and urlsplit(advertise).scheme not in ("ws", "wss"):
        raise ValueError(f"--cluster-advertise needs a ws:// URL, got {advertise!r}")
    secret = getattr(args, "cluster_secret", None) or env.get("LINK_CLUSTER_SECRET")
    return ClusterConfig(url, advertise or None, secret.encode() if secret else None)


def make_server(config: RelayConfig, cluster: ClusterConfig | None) -> RelayServer:
    """A single-process relay, or a cluster node."""
    if cluster is None:
        from ..server import RelayServer

        return RelayServer(config)
    from .node import ClusterRelayServer

    return ClusterRelayServer(config, cluster)
