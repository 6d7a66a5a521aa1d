"""Request ids, client addresses and audit ids (SPEC §3, §4)."""

from __future__ import annotations

import ipaddress
import time

from hypothesis import given
from hypothesis import strategies as st

from nz_proxy.exchange import client_address, request_id_from, uuid7

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))


@given(st.binary(max_size=100))
def test_request_ids_are_safe_to_echo(raw: bytes) -> None:
    chosen = request_id_from(raw)
    assert 1 <= len(chosen) <= 64
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in chosen)
    if chosen != raw.decode("latin-1"):
        assert len(chosen) == 32  # a new one


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    assert client_address("10.1.2.3", b"198.51.100.7", TRUSTED) == "198.51.100.7"
    assert client_address("203.0.113.5", b"198.51.100.7", TRUSTED) == "203.0.113.5"
    # The right-most hop that is not itself a trusted proxy.
    assert client_address("10.1.2.3", b"1.1.1.1, 198.51.100.7, 10.9.9.9", TRUSTED) == (
        "198.51.100.7"
    )
    assert client_address("10.1.2.3", b"not-an-ip", TRUSTED) == "10.1.2.3"
    assert client_address("10.1.2.3", None, TRUSTED) == "10.1.2.3"
    assert client_address("10.1.2.3", b"198.51.100.7", ()) == "10.1.2.3"


def test_audit_ids_are_time_ordered_version_7() -> None:
    ids = []
    for _ in range(50):
        ids.append(uuid7())
        time.sleep(0.001)
    assert all(i.version == 7 for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == 50
