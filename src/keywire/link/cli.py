"""Command-line subcommands for Link: ``relay``, ``pair`` and ``credentials``.

``add_parser(subparsers)`` adds all three; each sets ``func`` to an ``async def`` that takes the
parsed arguments and returns an exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import KeywireError
from .relay.cli import add_relay_arguments


def _pair_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "address",
        help="the host's link address, e.g. "
        "wss://R1/v1/link~link:ADDRESS;wss://R2/v1/link~link:ADDRESS",
    )
    parser.add_argument(
        "code",
        nargs="?",
        default=None,
        help="the pairing code the host shows (XXXX-XXXX); omit it with --recovery-key",
    )
    parser.add_argument("--code-id", default=None, help="the code id, if the host gave one")
    parser.add_argument(
        "--recovery-key",
        metavar="KEY",
        default=None,
        help="instead of a code: the host's long-lived recovery key "
        "(XXXX-XXXX-…); gets a new credential for this device, replacing any "
        "saved one, and the key stays valid",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=20.0,
        help="seconds for each relay's handshake (default 20)",
    )
    parser.set_defaults(func=run_pair)


async def run_pair(args: argparse.Namespace) -> int:
    from .client import pair, recover

    if (args.code is None) == (args.recovery_key is None):
        print("keywire pair: give either CODE or --recovery-key KEY", file=sys.stderr)
        return 2
    if args.recovery_key is not None and args.code_id is not None:
        print(
            "keywire pair: --code-id goes with a pairing code, not --recovery-key", file=sys.stderr
        )
        return 2
    try:
        if args.recovery_key is not None:
            credential, via = await recover(args.address, args.recovery_key, timeout=args.timeout)
        else:
            credential, via = await pair(
                args.address, args.code, code_id=args.code_id, timeout=args.timeout
            )
    except (KeywireError, ValueError, OSError) as exc:
        print(f"keywire pair: {exc}", file=sys.stderr)
        return 1
    how = "recovered access to" if args.recovery_key is not None else "paired with"
    print(f"{how} {credential.address} via {via}; credential saved", file=sys.stderr)
    return 0


def _credentials_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    listing = sub.add_parser(
        "list", help="credentials this device holds, and devices paired with this host"
    )
    listing.add_argument(
        "--json",
        action="store_true",
        help="one JSON object: credentials, devices and recovery keys",
    )
    listing.set_defaults(func=run_credentials_list)
    revoke = sub.add_parser("revoke", help="revoke a paired device (by key id) on this host")
    revoke.add_argument(
        "key_id",
        help="the device's keyId (base64url), from 'list'; write -- before it when it "
        "starts with '-' (keywire credentials revoke -- -AbC…)",
    )
    revoke.set_defaults(func=run_credentials_revoke)
    forget = sub.add_parser("forget", help="delete this device's credential for a host")
    forget.add_argument("address", help="the host's link address (43 characters)")
    forget.set_defaults(func=run_credentials_forget)


async def run_credentials_list(args: argparse.Namespace) -> int:
    from .store import ClientStore, HostStore, RecoveryStore

    credentials = [
        {"host": cred.address, "key_id": _b64(cred.key_id)} for cred in ClientStore().all()
    ]
    devices: list[dict[str, str]] = []
    recovery: list[dict[str, str]] = []
    for host in HostStore.all_hosts():
        for key_id, info in host.devices().items():
            devices.append({"host": host.address, "key_id": key_id, "paired": str(info)})
        saved = RecoveryStore(host.address)
        if saved.path.exists():
            recovery.append({"host": host.address, "path": str(saved.path)})
    if getattr(args, "json", False):
        print(
            json.dumps({"credentials": credentials, "devices": devices, "recovery_keys": recovery})
        )
        return 0
    for cred in credentials:
        print(f"credential  host={cred['host']}  keyId={cred['key_id']}")
    for dev in devices:
        print(f"device      host={dev['host']}  keyId={dev['key_id']}  paired={dev['paired']}")
    for rec in recovery:
        print(f"recovery    host={rec['host']}  a saved recovery key ({rec['path']})")
    return 0


async def run_credentials_revoke(args: argparse.Namespace) -> int:
    from .store import HostStore

    for host in HostStore.all_hosts():
        if host.revoke(args.key_id):
            print(f"revoked {args.key_id} on host {host.address}", file=sys.stderr)
            return 0
    print(f"keywire credentials: no paired device with keyId {args.key_id}", file=sys.stderr)
    return 1


async def run_credentials_forget(args: argparse.Namespace) -> int:
    from .store import ClientStore

    if ClientStore().forget(args.address):
        return 0
    print(f"keywire credentials: no credential for {args.address}", file=sys.stderr)
    return 1


def _b64(data: bytes) -> str:
    from .wire import b64u

    return b64u(data)


def add_parser(subparsers: Any) -> None:
    """Add ``relay``, ``pair`` and ``credentials`` to the keywire CLI."""
    add_relay_arguments(subparsers.add_parser("relay", help="run a Link relay"))
    _pair_parser(
        subparsers.add_parser(
            "pair", help="pair with a Link host using its code (or its recovery key)"
        )
    )
    _credentials_parser(
        subparsers.add_parser("credentials", help="list or revoke Link credentials")
    )
