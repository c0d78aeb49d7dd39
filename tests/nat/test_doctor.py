"""`keywire doctor` run as a real process behind each NAT preset of the lab, and without NAT."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from .lab import KEYWIRE, PRESETS, RELAY_IP, RELAY_IP2, Lab, Peer, run

RELAY_URL = f"ws://{RELAY_IP}:8080/v1/link"
EXPECTED_MAPPING = {
    "full-cone": "endpoint-independent",
    "eim-apdf": "endpoint-independent",
    "edm-pp": "endpoint-dependent",
    "edm-random": "endpoint-dependent",
}


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[Lab, dict[str, Peer]]]:
    """One lab for the module: two relays (the first with two STUN ports) and a peer behind
    each preset."""
    with Lab() as lab:
        lab.relay(host=RELAY_IP, port=8080, stun_ports=(3478, 3479))
        lab.relay(host=RELAY_IP2, port=8080, stun_ports=(3478,))
        peers = {preset: lab.add_peer(f"p{i}", preset) for i, preset in enumerate(PRESETS)}
        yield lab, peers


def doctor(lab: Lab, ns: str, *args: str) -> tuple[int, dict[str, Any]]:
    done = run(
        lab.exec_cmd(ns, KEYWIRE, "doctor", "--json", "--timeout", "1", *args),
        timeout=30,
        check=False,
    )
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


@pytest.mark.parametrize("preset", PRESETS)
def test_doctor_tells_the_mapping_behind_each_preset(
    world: tuple[Lab, dict[str, Peer]], preset: str
) -> None:
    lab, peers = world
    peer = peers[preset]
    code, report = doctor(
        lab,
        peer.ns,
        "--stun",
        f"{RELAY_IP}:3478",
        "--stun",
        f"{RELAY_IP2}:3478",
        "--relay",
        RELAY_URL,
    )
    assert code == 0
    assert report["public"].split(":")[0] == peer.public_ip
    assert report["local"].split(":")[0] == peer.private_ip
    assert report["nat"] == "present" and report["udp"] == "ok"
    assert report["mapping"] == EXPECTED_MAPPING[preset]
    assert report["filtering"] == (
        "open-to-new-ports" if preset == "full-cone" else "address-and-port-dependent"
    )
    if preset != "edm-random":
        assert report["port_preserved"] is True
    assert [r["reachable"] for r in report["relays"]] == [True]
    assert all(p["mapped"] for p in report["stun"])
    assert ("endpoint-independent mapping" in report["verdict"]) == (
        EXPECTED_MAPPING[preset] == "endpoint-independent"
    )


@pytest.mark.parametrize("preset", PRESETS)
def test_one_relay_with_two_stun_ports_is_enough(
    world: tuple[Lab, dict[str, Peer]], preset: str
) -> None:
    """Given only the relay's URL, the doctor asks its STUN port 3478 and then the other port
    the relay names (OTHER-ADDRESS)."""
    lab, peers = world
    code, report = doctor(lab, peers[preset].ns, "--relay", RELAY_URL)
    assert code == 0
    assert [p["address"] for p in report["stun"]] == [f"{RELAY_IP}:3478", f"{RELAY_IP}:3479"]
    assert report["mapping"] == EXPECTED_MAPPING[preset]
    assert report["filtering"] == (
        "open-to-new-ports" if preset == "full-cone" else "address-and-port-dependent"
    )


def test_udp_blocked_is_reported_and_the_relay_still_answers(
    world: tuple[Lab, dict[str, Peer]],
) -> None:
    lab, _ = world
    peer = lab.add_peer("blocked", "eim-apdf")
    lab.block_udp(peer)
    code, report = doctor(lab, peer.ns, "--relay", RELAY_URL)
    assert code == 0
    assert report["udp"] == "blocked" and report["public"] is None
    assert report["mapping"] == "unknown"
    assert report["relays"][0]["reachable"] is True
    assert "through a relay" in report["verdict"]
    assert "no answer within 1 s" in report["stun"][0]["error"]


def test_nothing_reachable_exits_3_and_bad_arguments_exit_2(
    world: tuple[Lab, dict[str, Peer]],
) -> None:
    lab, peers = world
    code, report = doctor(
        lab,
        peers["eim-apdf"].ns,
        "--stun",
        "198.51.100.99:3478",
        "--relay",
        "ws://198.51.100.99:8080/v1/link",
    )
    assert code == 3 and report["udp"] == "blocked"
    assert report["relays"][0]["reachable"] is False and report["relays"][0]["error"]
    env = {k: v for k, v in os.environ.items() if k not in ("KEYWIRE_STUN", "KEYWIRE_RELAY")}
    for bad in (["--stun", "host:0"], ["--timeout", "0", "--stun", "x"], []):
        done = subprocess.run(
            [KEYWIRE, "doctor", *bad],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=env,
        )
        assert done.returncode == 2 and "keywire doctor:" in done.stderr, done.stderr


def test_doctor_without_nat_on_loopback(relay_stun: tuple[int, int]) -> None:
    first, _ = relay_stun
    done = subprocess.run(
        [KEYWIRE, "doctor", "--json", "--stun", f"127.0.0.1:{first}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    report = json.loads(done.stdout)
    assert done.returncode == 0
    assert report["nat"] == "none" and report["public"] == report["local"]
    assert report["mapping"] == "endpoint-independent"  # both ports saw the same mapping
    # the relay names its other port, whose answer gets in: nothing filters loopback
    assert report["filtering"] == "open-to-new-ports"
    assert report["stun"][0]["address"] == f"127.0.0.1:{first}"
