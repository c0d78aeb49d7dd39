"""The lab's own tests: each router preset maps and filters as its name says, seen from the
internet side with plain UDP."""

from __future__ import annotations

import socket

import pytest

from .lab import PRESETS, RELAY_IP, RELAY_IP2, Lab, lab_namespaces, run

WAIT = 0.5


def _receive(sock: socket.socket, timeout: float = 2.0) -> tuple[bytes, tuple[str, int]]:
    sock.settimeout(timeout)
    data, addr = sock.recvfrom(2048)
    return data, addr


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_maps_and_filters_as_named(lab: Lab, preset: str) -> None:
    peer = lab.add_peer("a", preset)
    inside = lab.socket(peer.ns)
    local_port = inside.getsockname()[1]
    first = lab.socket(lab.inet, bind=(RELAY_IP, 0))
    second = lab.socket(lab.inet, bind=(RELAY_IP2, 0))
    same_ip_other_port = lab.socket(lab.inet, bind=(RELAY_IP, 0))
    other_ip = lab.socket(lab.inet, bind=(RELAY_IP2, 0))
    try:
        inside.sendto(b"one", first.getsockname())
        _, mapped1 = _receive(first)
        inside.sendto(b"two", second.getsockname())
        _, mapped2 = _receive(second)
        assert mapped1[0] == mapped2[0] == peer.public_ip
        # mapping
        if preset in ("full-cone", "eim-apdf"):
            assert mapped1[1] == mapped2[1] == local_port
        elif preset == "edm-pp":
            assert mapped1[1] == local_port and mapped2[1] != mapped1[1]
        else:
            assert mapped2[1] != mapped1[1]
        # the endpoint the peer sent to always gets through
        first.sendto(b"reply", mapped1)
        assert _receive(inside)[0] == b"reply"
        # filtering: strangers at the first mapping
        same_ip_other_port.sendto(b"stranger-port", mapped1)
        other_ip.sendto(b"stranger-ip", mapped1)
        got = set()
        while True:
            try:
                data, _ = _receive(inside, WAIT)
            except TimeoutError:
                break
            got.add(data)
        if preset == "full-cone":
            assert got == {b"stranger-port", b"stranger-ip"}
        else:
            assert got == set()
    finally:
        for sock in (inside, first, second, same_ip_other_port, other_ip):
            sock.close()


def test_lab_namespaces_are_removed_even_when_the_test_fails() -> None:
    names: list[str] = []
    with pytest.raises(RuntimeError, match="boom"), Lab() as lab:
        lab.add_peer("a", "edm-random")
        names = list(lab.namespaces)
        assert len(names) == 3
        raise RuntimeError("boom")
    assert names and not set(names) & set(lab_namespaces())
    assert not any(n in run(["ip", "netns", "list"]).stdout for n in names)


def test_unknown_preset_is_refused(lab: Lab) -> None:
    with pytest.raises(ValueError, match="unknown NAT preset"):
        lab.add_peer("a", "symmetric-ish")
