"""Hypothesis over the remaining parsers: secrets, sealed state files, snapshots."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keywire.store.core import StoreCore, StoreParams
from keywire.store.persist import StateError, new_state_key, open_state, seal_state
from keywire.store.schedule import Role
from keywire.store.secret import SecretError, parse_secret

KEY = new_state_key()


@given(st.text(max_size=120))
@settings(max_examples=1500, deadline=None)
def test_secret_parser_only_raises_secret_errors(text: str) -> None:
    try:
        secret = parse_secret(text)
    except SecretError as exc:
        assert str(exc)
    else:
        assert 32 <= len(secret) <= 64


@given(st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_state_files_that_do_not_open_are_state_errors(blob: bytes) -> None:
    with pytest.raises(StateError):
        open_state(blob, KEY)


def test_tampered_state_is_refused() -> None:
    core = StoreCore(bytes(range(32)), Role.DIALER)
    blob = bytearray(seal_state(core.snapshot(), KEY))
    blob[-1] ^= 1
    with pytest.raises(StateError, match="does not open"):
        open_state(bytes(blob), KEY)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "v",
                "secret",
                "role",
                "write_idx",
                "sent",
                "rto",
                "stop",
                "stop_code",
                "stop_idx",
                "peer_stop",
            ]
        ),
        st.one_of(
            st.integers(),
            st.text(max_size=5),
            st.binary(max_size=40),
            st.none(),
            st.lists(st.integers(), max_size=3),
        ),
    )
)
@settings(max_examples=500, deadline=None)
def test_malformed_snapshots_are_value_errors(mutation: dict[str, Any]) -> None:
    state = StoreCore(bytes(range(32)), Role.LISTENER).snapshot()
    state.update(mutation)
    try:
        StoreCore.from_snapshot(state, StoreParams())
    except ValueError as exc:
        assert "state" in str(exc) or "secret" in str(exc)
