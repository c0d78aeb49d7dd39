"""Link from the command line as a new user runs it: `keywire listen RELAY~link
--pairing-code CODE --stdio`, `keywire pair ADDRESS CODE` once, then `keywire dial ADDRESS`
reaches that same listener and the transfer completes both ways.

Pairing is not the session: the pairing run must not use up the one stream that
`listen --stdio` serves.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .conftest import FULL, Payloads, ServerProcess, pair_once
from .helpers import check_transfer, finish_transfer, side_env
from .transports import BASE_SECONDS, TRANSPORTS

pytestmark = pytest.mark.timeout(120)


def test_pair_then_dial_the_same_listener(
    relay: ServerProcess, payloads: Payloads, tmp_path: Path
) -> None:
    host_home, client_home = tmp_path / "host", tmp_path / "client"
    host_home.mkdir()
    client_home.mkdir()
    listener_in, dialer_in = payloads.listener[FULL], payloads.dialer[1]
    host, address = pair_once(relay, host_home, client_home, tmp_path, stdin=listener_in.path)
    deadline = time.monotonic() + BASE_SECONDS + FULL / TRANSPORTS["link"]
    outcome = finish_transfer(
        host,
        address,
        tmp_path,
        dialer_in=dialer_in,
        deadline=deadline,
        dialer_env=side_env(client_home),
        dial_args=["--key", str(client_home / "id.pem")],
    )
    problems = check_transfer(outcome, listener_in, dialer_in)
    assert not problems, "\n".join(problems)
