"""Secrets out of every message: the API key, values of options named like a key, secret,
password or token, and the user:password part of URLs.

Pure text functions, used where messages are made (argparse errors, `config`, `check`) and
again by the log formatters, so a secret that reaches a message by a path nobody foresaw
(a mistyped option name in a config file, credentials inside --lapi-url) is still masked.
"""

from __future__ import annotations

import re

MASK = "********"
# An option or field name that says its value is a secret: api_key, apikey, lapi-key,
# api-key-file, secret, password, passwd, token..., followed by `=`: but not the bare word
# `key` (the operational log's `key=ban` names the --action key that decided), nor a word
# that only starts with one (`keyUsage=critical` in the TLS advice is no secret).
_NAME = (r"(?!key\b)[A-Za-z0-9_.-]*(?:key|secret|passw[a-z]*|token)"
         r"(?:[_.-][A-Za-z0-9_.-]*)?")
_NAMED = re.compile(rf"(?i)(?<![\w-])(-{{0,2}}{_NAME}\s*=\s*)(\[[^\]]*\]|[^\s,;\]]+)")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s@]*@")
_UNRECOGNIZED = "unrecognized arguments: "
_known: set[str] = set()


def remember(secret: str) -> None:
    """A secret value (the API key) to mask wherever it appears later."""
    if len(secret) >= 6:  # a shorter one would mask ordinary words
        _known.add(secret)


def mask_url(url: str) -> str:
    """`url` with any user:password@ replaced by the mask."""
    return _USERINFO.sub(rf"\1{MASK}@", url)


def _unrecognized(message: str) -> str:
    """argparse's `unrecognized arguments: --name=value --name value ...` with every value
    masked (the option's name is what the operator needs to fix a typo; its value may be
    the key, as in `api_key = ...` in a config file). A word before any option is shown."""
    head, _, tail = message.partition(_UNRECOGNIZED)
    out: list[str] = []
    after_option = False
    for word in tail.split(" "):
        if word.startswith("-"):
            name, eq, value = word.partition("=")
            out.append(f"{name}={MASK}" if eq and value else word)
            after_option = not eq
        else:
            out.append(MASK if after_option and word else word)
    return head + _UNRECOGNIZED + " ".join(out)


def scrub(text: str) -> str:
    """`text` with every secret this module can recognize masked."""
    if _UNRECOGNIZED in text:
        text = _unrecognized(text)
    for secret in _known:
        if secret in text:
            text = text.replace(secret, MASK)
    if "://" in text:
        text = mask_url(text)
    return _NAMED.sub(lambda m: m.group(1) + MASK, text)
