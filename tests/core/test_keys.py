"""Key format, parsing and hashing (SPEC §4.1-4.2)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nz_core.errors import MalformedKey
from nz_core.keys import (
    DEFAULT_HASH_PROFILE,
    KEY_LENGTH,
    PREFIX_LENGTH,
    TEST_HASH_PROFILE,
    KeyHasher,
    digest,
    digest_matches,
    generate_key,
    is_prefix,
    parse_key,
)
from tests.strategies import api_keys, not_api_keys

KEY_RE = re.compile(r"^nz_[0-9A-Za-z]{52}$")
hasher = KeyHasher(TEST_HASH_PROFILE)


def test_generated_keys_have_the_documented_shape_and_are_unique() -> None:
    keys = {generate_key() for _ in range(2000)}
    assert len(keys) == 2000
    assert len({k[:PREFIX_LENGTH] for k in keys}) == 2000
    for key in keys:
        assert KEY_RE.match(key)
        assert len(key) == KEY_LENGTH == 55


@given(api_keys())
def test_every_well_formed_key_parses_to_its_prefix(key: str) -> None:
    parsed = parse_key(key)
    assert parsed.prefix == key[:12]
    assert parsed.value == key
    assert is_prefix(parsed.prefix)


@given(not_api_keys())
def test_anything_else_is_malformed(text: str) -> None:
    with pytest.raises(MalformedKey):
        parse_key(text)


def test_malformed_key_error_never_echoes_the_input() -> None:
    secret = "nz_" + "A" * 51 + "!"
    with pytest.raises(MalformedKey) as info:
        parse_key(secret)
    assert secret not in str(info.value)
    assert "AAAA" not in repr(info.value)


def test_parsed_key_repr_hides_the_secret() -> None:
    key = generate_key()
    assert key not in repr(parse_key(key))
    assert key[12:] not in repr(parse_key(key))


@given(st.text(max_size=20))
def test_prefix_shape(text: str) -> None:
    assert is_prefix(text) == bool(re.fullmatch(r"nz_[0-9A-Za-z]{9}", text))


def test_hash_verifies_only_the_same_key() -> None:
    key, other = generate_key(), generate_key()
    encoded = hasher.hash(key)
    assert encoded.startswith("$argon2id$")
    assert key not in encoded
    assert hasher.verify(encoded, key)
    assert not hasher.verify(encoded, other)
    assert not hasher.verify("not-a-hash", key)


def test_default_profile_is_owasp_argon2id_and_rehash_is_detected() -> None:
    assert (DEFAULT_HASH_PROFILE.memory_cost_kib, DEFAULT_HASH_PROFILE.time_cost) == (19456, 2)
    assert DEFAULT_HASH_PROFILE.parallelism == 1
    cheap = hasher.hash(generate_key())
    assert KeyHasher(DEFAULT_HASH_PROFILE).needs_rehash(cheap)
    assert not hasher.needs_rehash(cheap)
    assert hasher.needs_rehash("garbage")


@given(api_keys(), api_keys())
def test_digest_comparison(key: str, other: str) -> None:
    assert digest_matches(key, digest(key))
    assert digest_matches(other, digest(key)) == (key == other)
