"""API keys: format, parsing, and hashing (SPEC §4.1-4.2).

A key is ``nz_`` + 9 base62 characters + 43 base62 characters, 55 in all. The first
12 characters are the *prefix*: unique, stored in clear, safe to show in listings and
logs. The remaining 43 characters carry 256 bits from :mod:`secrets`. Only an
argon2id hash of the full key is stored; the gateway's cache keeps a SHA-256 digest so
a cached key is checked in constant time without running argon2 again.

Parsing is pure and cheap: anything that is not shaped like a key is rejected with
:class:`~nz_core.errors.MalformedKey` before any database or hashing work.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass, field
from typing import Final

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from argon2.profiles import CHEAPEST

from nz_core.errors import MalformedKey

__all__ = [
    "DEFAULT_HASH_PROFILE",
    "KEY_LENGTH",
    "PREFIX_LENGTH",
    "TEST_HASH_PROFILE",
    "HashProfile",
    "KeyHasher",
    "ParsedKey",
    "digest",
    "digest_matches",
    "generate_key",
    "is_prefix",
    "parse_key",
]

BASE62: Final = string.digits + string.ascii_uppercase + string.ascii_lowercase
KEY_MARKER: Final = "nz_"
PREFIX_LENGTH: Final = 12
SECRET_LENGTH: Final = 43  # 43 * log2(62) = 256.03 bits
KEY_LENGTH: Final = PREFIX_LENGTH + SECRET_LENGTH

_KEY_RE: Final = re.compile(r"nz_[0-9A-Za-z]{52}")
_PREFIX_RE: Final = re.compile(r"nz_[0-9A-Za-z]{9}")


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """A key that has the right shape. Its ``value`` is secret and kept out of ``repr``."""

    prefix: str
    value: str = field(repr=False)


def generate_key() -> str:
    """A new random key. Show it to its owner once; store only :meth:`KeyHasher.hash`."""
    body = "".join(secrets.choice(BASE62) for _ in range(KEY_LENGTH - len(KEY_MARKER)))
    return KEY_MARKER + body


def parse_key(text: str) -> ParsedKey:
    """Shape-check ``text`` and split off its prefix.

    Raises:
        MalformedKey: ``text`` is not exactly a key (wrong length, marker or alphabet).
    """
    if len(text) != KEY_LENGTH or not _KEY_RE.fullmatch(text):
        raise MalformedKey
    return ParsedKey(prefix=text[:PREFIX_LENGTH], value=text)


def is_prefix(text: str) -> bool:
    """Whether ``text`` has the shape of a key prefix (``nz_`` + 9 base62)."""
    return len(text) == PREFIX_LENGTH and _PREFIX_RE.fullmatch(text) is not None


def digest(key: str) -> bytes:
    """SHA-256 of the key: what the gateway's cache stores instead of the key."""
    return hashlib.sha256(key.encode("ascii")).digest()


def digest_matches(key: str, expected: bytes) -> bool:
    """Constant-time comparison of ``key``'s digest with a cached one."""
    return hmac.compare_digest(digest(key), expected)


@dataclass(frozen=True, slots=True)
class HashProfile:
    """argon2id cost parameters. They are recorded in every hash string, so raising
    them later only needs :meth:`KeyHasher.needs_rehash` on the next verification."""

    time_cost: int
    memory_cost_kib: int
    parallelism: int
    hash_len: int = 32
    salt_len: int = 16


# OWASP's first argon2id recommendation (19 MiB, 2 passes, 1 lane): about 30 ms per
# verification on a 2-core machine. The secrets are 256-bit random, so the hash only has
# to make a stolen dump useless; one lane keeps each verification on one core.
DEFAULT_HASH_PROFILE: Final = HashProfile(time_cost=2, memory_cost_kib=19456, parallelism=1)

# For tests only: argon2-cffi's cheapest valid parameters.
TEST_HASH_PROFILE: Final = HashProfile(
    time_cost=CHEAPEST.time_cost,
    memory_cost_kib=CHEAPEST.memory_cost,
    parallelism=CHEAPEST.parallelism,
    hash_len=CHEAPEST.hash_len,
    salt_len=CHEAPEST.salt_len,
)


class KeyHasher:
    """argon2id hashing and verification of full keys with one :class:`HashProfile`."""

    def __init__(self, profile: HashProfile = DEFAULT_HASH_PROFILE) -> None:
        self.profile = profile
        self._hasher = argon2.PasswordHasher(
            time_cost=profile.time_cost,
            memory_cost=profile.memory_cost_kib,
            parallelism=profile.parallelism,
            hash_len=profile.hash_len,
            salt_len=profile.salt_len,
            type=argon2.Type.ID,
        )

    def hash(self, key: str) -> str:
        """The encoded argon2id hash of ``key`` (parameters and salt included)."""
        return self._hasher.hash(key)

    def verify(self, encoded: str, key: str) -> bool:
        """Whether ``key`` matches ``encoded``. A corrupt hash verifies nothing."""
        try:
            return self._hasher.verify(encoded, key)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, encoded: str) -> bool:
        """Whether ``encoded`` was made with other parameters than this profile."""
        try:
            return self._hasher.check_needs_rehash(encoded)
        except InvalidHashError:
            return True
