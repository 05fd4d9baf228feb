"""Client address strings as MTAs hand them over, to (family, number, canonical text):
the key the index looks up and the text logs, replies and events show."""

from __future__ import annotations

import pytest
from crowdsec_milter.decisions import parse_address


@pytest.mark.parametrize(("text", "key"), [
    ("192.0.2.1", (4, 0xC0000201, "192.0.2.1")),
    ("[192.0.2.1]", (4, 0xC0000201, "192.0.2.1")),
    ("IPv6:192.0.2.1", (4, 0xC0000201, "192.0.2.1")),
    ("::ffff:192.0.2.1", (4, 0xC0000201, "192.0.2.1")),
    ("[IPv6:2001:DB8::1]", (6, 0x20010DB8 << 96 | 1, "2001:db8::1")),
    ("fe80::1%eth0", (6, 0xFE80 << 112 | 1, "fe80::1")),
    ("fe80::1%eth0%x", (6, 0xFE80 << 112 | 1, "fe80::1")),
])
def test_address_forms(text: str, key: tuple[int, int, str]) -> None:
    assert parse_address(text) == key


@pytest.mark.parametrize("text", ["", "[192.0.2.1", "192.0.2.1]", "[]", "unknown",
                                  "192.0.2.256", "IPv6:", "2001:db8::g"])
def test_not_addresses(text: str) -> None:
    assert parse_address(text) is None
