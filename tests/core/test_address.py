"""Address grammar: multiserver's behaviour, URL sections, the bare KPS form, strict errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keywire.address import (
    Alternative,
    MultiAddress,
    Section,
    format_address,
    host_port_args,
    parse,
    redacted,
    split_host_port,
)
from keywire.errors import AddressError

CERTHASH = "uEiAAAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHw"
KEY = "+y42DK+BGzqvU00EWMKiyj4fITskSm+Drxq1Dt2s3Yw="


SECRET = "A" * 42 + "E"


def test_redacted_hides_store_secrets_invite_seeds_and_url_credentials() -> None:
    text = (
        f"redis://:hunter2@127.0.0.1:6379/0~stream:{SECRET};"
        f"net:h:8008~shs:{KEY}:SEEDSEEDSEED;https://user:pw@m.example/v1~stream:{SECRET};"
        f"kps:127.0.0.1:4433:{CERTHASH}"
    )
    shown = redacted(parse(text))
    for secret in (SECRET, "hunter2", "SEEDSEEDSEED", "user", "pw@"):
        assert secret not in shown
    # what identifies the peer stays: hosts, ports, public keys, certhashes
    assert shown == (
        f"redis://…@127.0.0.1:6379/0~stream:…;net:h:8008~shs:{KEY}:…;"
        f"https://…@m.example/v1~stream:…;kps:127.0.0.1:4433:{CERTHASH}"
    )
    assert redacted(parse(f"net:h:1~shs:{KEY}").alternatives[0]) == f"net:h:1~shs:{KEY}"


def test_multiserver_address_with_shs() -> None:
    addr = parse(f"net:host.com:8008~shs:{KEY}")
    (alt,) = addr.alternatives
    assert alt.names == ("net", "shs")
    assert split_host_port(alt.transport) == ("host.com", 8008)
    assert alt.transforms[0].args == (KEY,)


def test_alternatives_in_order() -> None:
    addr = parse(f"ws://h:8989~shs:{KEY};net:h:8008~shs:{KEY}")
    assert [a.transport.name for a in addr] == ["ws", "net"]
    assert addr.alternatives[0].transport.url == "ws://h:8989"


def test_bare_ipv6_in_net() -> None:
    (alt,) = parse("net:fe80::1:8008").alternatives
    assert split_host_port(alt.transport) == ("fe80::1", 8008)
    assert str(Section("net", host_port_args("fe80::1", 8008))) == "net:fe80::1:8008"


def test_empty_args_allowed_as_in_multiserver_address() -> None:
    (alt,) = parse("shs:::").alternatives
    assert alt.transport.args == ("", "", "")


def test_escapes() -> None:
    (alt,) = parse("ab:c!~d!!:e!:f!;g").alternatives
    assert alt.transport.args == ("c~d!", "e:f;g")
    assert parse(str(alt)) == MultiAddress((alt,))


def test_ws_default_ports() -> None:
    assert parse("ws://h").alternatives[0].transport.url_host_port() == ("h", 80)
    assert parse("wss://h/p").alternatives[0].transport.url_host_port() == ("h", 443)
    assert parse("ws://h:8989").alternatives[0].transport.url_host_port() == ("h", 8989)


def test_url_sections_by_scheme() -> None:
    for text in (
        "http://127.0.0.1:8080~stream:abc",
        "redis://127.0.0.1:6379/0~stream:abc",
        "wss://relay.example/v1/link~link:ADDR",
        "https://[::1]:9/x~stream:s",
    ):
        addr = parse(text)
        assert str(addr) == text
        assert addr.alternatives[0].transport.is_url


def test_bare_kps_forms() -> None:
    (alt,) = parse(f"127.0.0.1:4242:{CERTHASH}").alternatives
    assert alt.transport == Section("kps", ("127.0.0.1", "4242", CERTHASH), bare=True)
    (alt6,) = parse(f"[::1]:4242:{CERTHASH}").alternatives
    assert alt6.transport.args == ("::1", "4242", CERTHASH)
    assert str(alt6) == f"[::1]:4242:{CERTHASH}"
    named = parse(f"kps:127.0.0.1:4242:{CERTHASH}").alternatives[0].transport
    assert named.name == "kps" and not named.bare


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("", 0),
        (":h:1", 0),
        ("1a:x", 0),
        ("ABC:x", 0),
        ("a.b:x", 0),
        ("~:x", 0),
        (";:x", 0),
        ("!:x", 0),
        ("net:h:1~", 8),
        ("net~~shs", 4),
        ("net:a b", 5),
        ("ws://:80", 5),
        (f"1.2.3.4:0:{CERTHASH}", 8),
        (f"[zz]:1:{CERTHASH}", 1),
        ("net:x!", 5),
    ],
)
def test_malformed_addresses_name_the_position(text: str, position: int) -> None:
    with pytest.raises(AddressError) as info:
        parse(text)
    assert info.value.position == position
    assert "expected" in str(info.value)


def test_split_host_port_errors() -> None:
    with pytest.raises(AddressError, match="port"):
        split_host_port(parse("net:h:x").alternatives[0].transport)
    with pytest.raises(AddressError, match="HOST:PORT"):
        split_host_port(parse("net").alternatives[0].transport)
    assert split_host_port(parse("net:h:0").alternatives[0].transport, allow_zero=True) == ("h", 0)


# -- properties --------------------------------------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9-]{1,8}", fullmatch=True).filter(
    lambda n: n not in ("ws", "wss", "http", "https", "redis", "rediss")
)
args = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=12)
sections = st.builds(lambda n, a: Section(n, tuple(a)), names, st.lists(args, max_size=4))
urls = st.builds(
    lambda scheme, host, port, path: Section(scheme, (), f"{scheme}://{host}:{port}{path}"),
    st.sampled_from(["ws", "wss", "http", "redis"]),
    st.from_regex(r"[a-z][a-z0-9]{0,10}(\.[a-z]{2,5})?", fullmatch=True),
    st.integers(1, 65535),
    st.from_regex(r"(/[a-zA-Z0-9~;!_-]{0,6}){0,2}", fullmatch=True),
)
alternatives = st.builds(
    lambda first, rest: Alternative((first, *rest)),
    st.one_of(sections, urls),
    st.lists(sections, max_size=3),
)
addresses = st.builds(
    lambda alts: MultiAddress(tuple(alts)), st.lists(alternatives, min_size=1, max_size=3)
)


@settings(max_examples=400, deadline=None)
@given(addresses)
def test_parse_format_round_trip(addr: MultiAddress) -> None:
    text = format_address(addr)
    assert parse(text) == addr
    assert format_address(parse(text)) == text


@settings(max_examples=1500, deadline=None)
@given(st.text(max_size=80))
def test_parse_raises_only_address_error(text: str) -> None:
    try:
        addr = parse(text)
    except AddressError as exc:
        assert 0 <= exc.position <= len(text)
        return
    assert parse(str(addr)) == addr


@settings(max_examples=800, deadline=None)
@given(st.text(alphabet="net:shs~;!abw/1:[]. ", max_size=40))
def test_parse_grammar_like_text(text: str) -> None:
    try:
        addr = parse(text)
    except AddressError:
        return
    assert parse(str(addr)) == addr
