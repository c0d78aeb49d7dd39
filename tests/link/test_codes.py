"""Pairing-code normalisation: what a person types maps to one canonical code."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keywire.link import codes


def test_canonical_forms() -> None:
    assert codes.normalise("abcd-efgh") == "ABCD-EFGH"
    assert codes.normalise(" ab cd ef gh ") == "ABCD-EFGH"
    assert codes.normalise("ABCDEFGH") == "ABCD-EFGH"
    assert codes.normalise("oIlL-0000") == "0111-0000"
    assert codes.normalise("123456") == "123456"


@pytest.mark.parametrize("bad", ["", "abc", "ABCD-EFGU", "ABCD*EFGH", "x" * 33, "ÄBCD-EFGH"])
def test_rejections_say_what_is_wrong(bad: str) -> None:
    with pytest.raises(codes.CodeError, match=r"pairing code|code has"):
        codes.normalise(bad)


def test_generated_codes_are_canonical_and_random() -> None:
    seen = {codes.generate() for _ in range(200)}
    assert len(seen) == 200
    for code in seen:
        assert len(code) == 9 and code[4] == "-"
        assert codes.normalise(code) == code
        assert codes.entropy_bits(code) == 40


_TYPED = st.text(alphabet=codes.ALPHABET + "iloIlo- ", min_size=0, max_size=40)


@given(st.text(max_size=60))
def test_fuzz_any_text_normalises_or_raises_code_error(text: str) -> None:
    try:
        out = codes.normalise(text)
    except codes.CodeError:
        return
    assert codes.normalise(out) == out
    assert set(out) <= set(codes.ALPHABET + "-")


@given(_TYPED)
def test_fuzz_typing_variants_agree(text: str) -> None:
    try:
        canonical = codes.normalise(text)
    except codes.CodeError:
        return
    assert codes.normalise(text.lower()) == canonical
    assert codes.normalise(text.upper().replace("-", " ")) == canonical
    bare = canonical.replace("-", "")
    assert codes.normalise("-".join(bare)) == canonical
