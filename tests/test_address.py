"""Recipient addresses in one spelling (address.py): what trap and always-allow patterns
are matched against."""

from __future__ import annotations

import pytest
from crowdsec_milter.address import is_postmaster, matches, normalize, spellings


@pytest.mark.parametrize(("path", "expected"), [
    ("<trap@example.org>", "trap@example.org"),
    ('<"trap"@example.org>', "trap@example.org"),
    ("<trap@example.org.>", "trap@example.org"),
    ("<@relay.example.net:trap@example.org>", "trap@example.org"),
    ("<@a.example,@b.example:trap@example.org>", "trap@example.org"),
    ("<@[IPv6:2001:db8::1]:trap@example.org>", "trap@example.org"),
    ("<Trap@EXAMPLE.ORG>", "trap@example.org"),
    ('<"tr\\ap"@example.org>', "trap@example.org"),
    (" trap@example.org ", "trap@example.org"),
    ("<Postmaster>", "postmaster"),
    ('<"Postmaster">', "postmaster"),
    # quotes that matter stay: these are other mailboxes
    ('<"trap@example.org"@evil.example>', '"trap@example.org"@evil.example'),
    ('<"a b"@example.org>', '"a b"@example.org'),
    ('<"a\\"b"@example.org>', '"a\\"b"@example.org'),
    # not what they look like
    ("<@trap@example.org:x@evil.example>", "x@evil.example"),
    ("<trap@example.org.evil>", "trap@example.org.evil"),
    ('<"open@example.org>', '"open@example.org'),
    ('<"trap"x@example.org>', '"trap"x@example.org'),
    ("<@no.route.colon>", "@no.route.colon"),
    ("<>", ""),
    ("<@[IPv6:2001:db8::1],@[IPv6:::2]:trap@example.org>", "trap@example.org"),
    ("<t@BOX.>", "t@box"),
    ('<"a\\\\ b"@example.org>', '"a\\\\ b"@example.org'),  # an escaped backslash stays one
    ('<"a\\"@example.org>', '"a\\"@example.org'),  # a quote escaped: still open
    ('"open\\', '"open\\'),  # a backslash at the very end
    ('"a\\"', '"a\\"'),  # an escaped quote as the last character: still open
])
def test_one_spelling_per_mailbox(path: str, expected: str) -> None:
    assert normalize(path) == expected


def test_the_resolved_address_is_matched_too() -> None:
    assert spellings("<x@example.org>", "trap@example.org") == (
        "x@example.org", "trap@example.org")
    assert spellings("<trap@example.org>", "Trap@example.org.") == ("trap@example.org",)
    assert spellings("<trap@example.org>", "") == ("trap@example.org",)
    assert spellings("<trap@example.org>") == ("trap@example.org",)
    assert matches(("x@example.org", "trap@example.org"), ("trap@*",))
    assert not matches(("x@example.org",), ("trap@*", "abuse@*"))


@pytest.mark.parametrize(("path", "expected"), [
    ("<Postmaster>", True), ("<POSTMASTER>", True), ('<"postmaster">', True),
    ("postmaster", True), ("<postmaster@example.org>", False), ("<postmasterx>", False),
    ("<@relay.example:postmaster>", True), ("<>", False)])
def test_unqualified_postmaster(path: str, expected: bool) -> None:
    assert is_postmaster(path) is expected
