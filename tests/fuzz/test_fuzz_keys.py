"""Fuzzing the key shape check (SPEC §4.1): ``parse_key``, ``is_prefix`` and the header
extraction in front of them.

tests/core/test_keys.py checks well-formed keys and a family of near misses. Here the
input is anything a client can put in a header: arbitrary Unicode (surrogates, look-alike
digits and letters, zero-width and case-folding characters), header bytes decoded the
way the gateway decodes them (latin-1), and every single-character edit of a real key.
The only outcome besides a :class:`ParsedKey` is :class:`MalformedKey`, and which one is
decided by an independent statement of the format, not by the module's own regex.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nz_core.errors import MalformedKey
from nz_core.keys import (
    KEY_LENGTH,
    PREFIX_LENGTH,
    ParsedKey,
    digest,
    digest_matches,
    generate_key,
    is_prefix,
    parse_key,
)
from nz_proxy.auth import presented_key
from tests.strategies import api_keys

BASE62 = frozenset(string.digits + string.ascii_letters)

# Characters that a Unicode-aware check (str.isalnum, \w, \d, re.IGNORECASE, NFKC)
# would wrongly take for base62: other scripts' digits, full-width forms, letters that
# case-fold into ASCII (KELVIN SIGN, LONG S, dotted/dotless i), Cyrillic and Greek
# look-alikes, super/subscripts, plus invisible and line-ending characters.
LOOKALIKES = (
    "٠١٩۰۹०९০৯๐๙０９ＡＺａｚ"
    "\u212a\u017f\u0130\u0131\u0430\u043e\u0391\u039f\u00b2\u2070\u2080\u00aa\u00ba"
    "\u0301\u200b\u200d\ufeff\u00a0\u3000\u2028\u2029\u0085\x00\x0b\x0c\x1c\r\n\t "
    "-_+/=.~!:;@#$%\\"
)

# Any code point, lone surrogates included (they survive in str from JSON, os, etc.).
any_char = (
    st.characters(codec=None) | st.characters(categories=["Cs"]) | st.sampled_from(LOOKALIKES)
)
non_base62_char = any_char.filter(lambda c: c not in BASE62)

# Header bytes as the gateway turns them into text (latin-1, nz_proxy.auth), and as
# other layers might (UTF-8 with replacement or surrogateescape).
decoded_bytes = st.binary(max_size=80).flatmap(
    lambda raw: st.sampled_from(
        [
            raw.decode("latin-1"),
            raw.decode("utf-8", "replace"),
            raw.decode("utf-8", "surrogateescape"),
        ]
    )
)


def is_key_shaped(text: str) -> bool:
    """SPEC §4.1 spelled out without a regex: ``nz_`` then 52 ASCII base62 characters."""
    return len(text) == 55 and text[:3] == "nz_" and all(c in BASE62 for c in text[3:])


def outcome(text: str) -> ParsedKey | None:
    """``parse_key``'s answer, with the documented refusal as None."""
    try:
        return parse_key(text)
    except MalformedKey as error:
        refusal = error
    # The refusal is one fixed message: it never carries (part of) the input.
    assert str(refusal) == "malformed API key"
    assert refusal.args == ("malformed API key",)
    return None


def check_agrees_with_the_format(text: str) -> None:
    parsed = outcome(text)
    if not is_key_shaped(text):
        assert parsed is None, f"accepted a non-key: {text!r}"
        return
    assert parsed is not None
    assert parsed.value == text
    assert parsed.prefix == text[:PREFIX_LENGTH]
    assert is_prefix(parsed.prefix)


# --------------------------------------------------------------------------- any text


@settings(max_examples=200)
@given(
    st.one_of(
        st.text(any_char, max_size=70),
        # Right length and marker, arbitrary body: the part a length check cannot decide.
        st.text(any_char, min_size=52, max_size=52).map(lambda body: "nz_" + body),
        st.text(st.sampled_from(sorted(BASE62) + list(LOOKALIKES)), min_size=52, max_size=52).map(
            lambda body: "nz_" + body
        ),
        decoded_bytes,
    )
)
def test_any_text_parses_exactly_when_it_has_the_key_format(text: str) -> None:
    check_agrees_with_the_format(text)


@settings(max_examples=100)
@given(api_keys(), st.integers(min_value=3, max_value=KEY_LENGTH - 1), non_base62_char)
def test_one_non_base62_character_anywhere_in_the_body_is_refused(
    key: str, index: int, char: str
) -> None:
    mutated = key[:index] + char + key[index + 1 :]
    assert outcome(mutated) is None


@settings(max_examples=200)
@given(api_keys(), st.data())
def test_every_single_character_edit_of_a_key_is_decided_by_the_format(
    key: str, data: st.DataObject
) -> None:
    """Substitution, deletion, insertion, truncation, extension, surrounding text."""
    edit = data.draw(
        st.sampled_from(["substitute", "delete", "insert", "truncate", "extend", "wrap"])
    )
    if edit == "substitute":
        index = data.draw(st.integers(min_value=0, max_value=KEY_LENGTH - 1))
        char = data.draw(any_char.filter(lambda c: c != key[index]))
        mutated = key[:index] + char + key[index + 1 :]
        parsed = outcome(mutated)
        # Still a key only when a body character became another base62 character.
        assert (parsed is not None) == (index >= 3 and char in BASE62)
        if parsed is not None:
            # The prefix follows the edit exactly: it changes iff the edit was in it.
            assert parsed.prefix == mutated[:PREFIX_LENGTH]
            assert (parsed.prefix == key[:PREFIX_LENGTH]) == (index >= PREFIX_LENGTH)
        return
    if edit == "delete":
        index = data.draw(st.integers(min_value=0, max_value=KEY_LENGTH - 1))
        mutated = key[:index] + key[index + 1 :]
    elif edit == "insert":
        index = data.draw(st.integers(min_value=0, max_value=KEY_LENGTH))
        mutated = key[:index] + data.draw(any_char) + key[index:]
    elif edit == "truncate":
        mutated = key[: data.draw(st.integers(min_value=0, max_value=KEY_LENGTH - 1))]
    elif edit == "extend":
        mutated = key + data.draw(st.text(any_char, min_size=1, max_size=8))
    else:
        before = data.draw(st.text(any_char, max_size=3))
        after = data.draw(st.text(any_char, max_size=3))
        mutated = before + key + after
        if not before and not after:
            mutated = "Bearer " + key
    assert outcome(mutated) is None, f"{edit} produced an accepted key: {mutated!r}"


@settings(max_examples=50)
@given(api_keys(), st.sampled_from(["NZ_", "Nz_", "nZ_", "nz-", "nz:", "nz\u2010", "\uff4ez_"]))
def test_the_marker_is_case_and_punctuation_exact(key: str, marker: str) -> None:
    assert outcome(marker + key[3:]) is None
    assert not is_prefix(marker + key[3:PREFIX_LENGTH])


# --------------------------------------------------------------------------- round trips


def test_generated_keys_parse_and_round_trip_their_prefix() -> None:
    for _ in range(200):
        key = generate_key()
        parsed = parse_key(key)
        assert parsed == ParsedKey(prefix=key[:PREFIX_LENGTH], value=key)
        assert parsed.prefix + key[PREFIX_LENGTH:] == key
        assert is_prefix(parsed.prefix)
        assert not is_prefix(key)
        # The parsed value is what the cache digests: it must hash without surprises.
        assert digest_matches(parsed.value, digest(key))


@settings(max_examples=200)
@given(api_keys(), st.data())
def test_is_prefix_accepts_exactly_the_first_twelve_characters_of_a_key(
    key: str, data: st.DataObject
) -> None:
    prefix = parse_key(key).prefix
    assert is_prefix(prefix)
    # Every other length cut from the key, and any single edit of the prefix, is not one.
    cut = data.draw(st.integers(min_value=0, max_value=KEY_LENGTH).filter(lambda n: n != 12))
    assert not is_prefix(key[:cut])
    index = data.draw(st.integers(min_value=0, max_value=PREFIX_LENGTH - 1))
    char = data.draw(any_char.filter(lambda c: c != prefix[index]))
    edited = prefix[:index] + char + prefix[index + 1 :]
    assert is_prefix(edited) == (index >= 3 and char in BASE62)


@settings(max_examples=200)
@given(st.one_of(st.text(any_char, max_size=16), decoded_bytes))
def test_is_prefix_on_any_text_agrees_with_the_format(text: str) -> None:
    expected = len(text) == 12 and text[:3] == "nz_" and all(c in BASE62 for c in text[3:])
    assert is_prefix(text) is expected


# --------------------------------------------------------------------------- from the header


header_padding = st.text(st.sampled_from(" \t"), max_size=3).map(str.encode)


@settings(max_examples=200)
@given(
    api_keys(),
    st.sampled_from([b"Bearer", b"bearer", b"BEARER", b"bEaReR"]),
    header_padding,
    header_padding,
    header_padding,
)
def test_a_key_in_the_authorization_header_parses_through_any_spacing(
    key: str, scheme: bytes, lead: bytes, gap: bytes, trail: bytes
) -> None:
    header = lead + scheme + b" " + gap + key.encode() + trail
    text = presented_key({b"authorization": header})
    assert text == key
    assert parse_key(text).prefix == key[:PREFIX_LENGTH]


@settings(max_examples=200)
@given(
    st.dictionaries(
        st.sampled_from([b"authorization", b"x-api-key", b"cookie"]),
        st.one_of(
            st.binary(max_size=80),
            api_keys().flatmap(
                lambda key: st.sampled_from(
                    [
                        b"Bearer " + key.encode(),
                        key.encode(),
                        b"Bearer " + key.encode() + b"\xff",
                        b"Basic " + key.encode(),
                        b"Bearer " + key.encode().replace(b"A", b"\xc1"),
                    ]
                )
            ),
        ),
    )
)
def test_any_header_bytes_give_a_key_or_the_one_refusal(headers: dict[bytes, bytes]) -> None:
    """What a client sends reaches ``parse_key`` as latin-1 text; nothing else escapes."""
    text = presented_key(headers)
    if text is None:
        return
    assert isinstance(text, str)
    check_agrees_with_the_format(text)
    if outcome(text) is not None:
        # latin-1 cannot forge a key out of non-ASCII bytes: a key that comes out was
        # sent verbatim, as ASCII, in one of the two key headers.
        sent = [headers.get(b"authorization", b""), headers.get(b"x-api-key", b"")]
        assert any(text.encode("ascii") in value for value in sent)


def test_huge_and_odd_texts_get_the_same_short_refusal() -> None:
    for text in ("nz_" + "A" * 10_000_000, "nz_" + "A" * 52 + "\n", "\ud800" * 55):
        with pytest.raises(MalformedKey) as info:
            parse_key(text)
        assert len(str(info.value)) < 40
