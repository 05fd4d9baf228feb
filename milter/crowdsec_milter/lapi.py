"""The CrowdSec Local API client: the two requests a bouncer makes, and nothing else.

It speaks HTTP and JSON and turns every failure into one `LapiError` with a short `kind`
(for logs and metrics), so callers never see an httpx exception. The API key travels only
in the `X-Api-Key` header and never appears in an error text.
"""

from __future__ import annotations

import contextlib
import json
import re
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from . import __version__
from .jsonstream import StreamFormatError, iter_arrays, iter_list

USER_AGENT = f"crowdsec-milter/{__version__}"
# An API key travels as a header value: printable ASCII, spaces only inside.
_HEADER_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")


def header_safe(key: str) -> bool:
    """True when `key` can be sent as an HTTP header value as it is."""
    return _HEADER_VALUE.fullmatch(key) is not None


class LapiError(Exception):
    """A request that gave no usable answer. `kind` is one word: connect, timeout, auth,
    http, decode, too_large."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class StreamAnswer:
    """The `new` and `deleted` lists of one stream pull (LAPI's `null` becomes empty)."""

    new: list[Any]
    deleted: list[Any]


class LapiClient:
    """A thread-safe LAPI client for one bouncer key."""

    def __init__(
        self,
        url: str,
        api_key: str | None,
        timeout: float,
        *,
        startup_timeout: float | None = None,
        max_bytes: int = 1 << 30,
        verify: str | bool = True,
        cert: tuple[str, str] | None = None,
    ) -> None:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if api_key:
            headers["X-Api-Key"] = api_key
        # The forms in which the key could show up in an exception's text (h11 quotes a bad
        # header value as bytes), to cut from every error: defence in depth, as the CLI
        # refuses keys that are no valid header value.
        self._secrets = sorted({f for f in (api_key, repr(api_key)[1:-1],
                                            repr(api_key.encode("utf-8", "replace"))[2:-1])
                                if f} if api_key else set(), key=len, reverse=True)
        self._base = url.rstrip("/") + "/"
        self._timeout = timeout
        self._startup_timeout = startup_timeout or max(timeout, 30.0)
        self._max_bytes = max_bytes
        context: ssl.SSLContext | bool = verify if isinstance(verify, bool) and not cert else \
            ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
        if cert and isinstance(context, ssl.SSLContext):
            context.load_cert_chain(*cert)  # bouncer auth by client certificate
        self._http = httpx.Client(
            headers=headers,
            verify=context,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )

    def close(self) -> None:
        self._http.close()

    @contextlib.contextmanager
    def _open(self, path: str, params: dict[str, str], timeout: float) -> Iterator[Iterator[bytes]]:
        """GET path; yields an iterator over the body's chunks, at most max_bytes of them.
        Every transport failure, here or while iterating, becomes a LapiError."""
        try:
            with self._http.stream(
                "GET", self._base + path, params=params, timeout=timeout
            ) as response:
                if response.status_code == 403:
                    raise LapiError("auth", "LAPI refused the API key (403 access forbidden)")
                if response.status_code != 200:
                    raise LapiError("http", f"LAPI answered HTTP {response.status_code}")
                yield self._capped(response.iter_bytes())
        except httpx.TimeoutException as exc:
            raise LapiError("timeout", f"LAPI did not answer within {timeout:g}s") from exc
        except httpx.HTTPError as exc:
            raise LapiError("connect", self._scrub(f"LAPI unreachable: {type(exc).__name__}: "
                                                   f"{exc}")) from exc

    def _scrub(self, text: str) -> str:
        """`text` without the API key in any form it may take in an exception's text."""
        for secret in self._secrets:
            text = text.replace(secret, "<api-key>")
        return text

    def _capped(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        size = 0
        for chunk in chunks:
            size += len(chunk)
            if size > self._max_bytes:
                raise LapiError("too_large", f"LAPI answer exceeds {self._max_bytes} bytes")
            yield chunk

    def _get(self, path: str, params: dict[str, str], timeout: float) -> Any:
        """GET a JSON document, reading at most max_bytes of it."""
        with self._open(path, params, timeout) as chunks:
            body = b"".join(chunks)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise LapiError("decode", f"LAPI answer is not JSON ({len(body)} bytes)") from exc

    def health(self) -> int:
        """HTTP status of GET /health (no authentication needed)."""
        try:
            return self._http.get(self._base + "health", timeout=self._timeout).status_code
        except httpx.TimeoutException as exc:
            raise LapiError("timeout", f"LAPI did not answer within {self._timeout:g}s") from exc
        except httpx.HTTPError as exc:
            raise LapiError("connect", f"LAPI unreachable: {type(exc).__name__}") from exc

    def post_json(self, path: str, doc: Any) -> int:
        """POST a JSON document; the HTTP status."""
        try:
            return self._http.post(self._base + path, json=doc,
                                   timeout=self._timeout).status_code
        except httpx.TimeoutException as exc:
            raise LapiError("timeout", f"LAPI did not answer within {self._timeout:g}s") from exc
        except httpx.HTTPError as exc:
            raise LapiError("connect", f"LAPI unreachable: {type(exc).__name__}") from exc

    def stream(self, startup: bool) -> StreamAnswer:
        """One pull of /v1/decisions/stream; `startup` asks for every active decision."""
        lists: dict[str, list[Any]] = {"new": [], "deleted": []}
        for key, item in self.stream_items(startup):
            lists[key].append(item)
        return StreamAnswer(new=lists["new"], deleted=lists["deleted"])

    def stream_items(self, startup: bool) -> Iterator[tuple[str, Any]]:
        """One pull, as ("new" | "deleted", decision) pairs read while the body arrives,
        so a startup answer with a million decisions is never held whole in memory.
        Raises LapiError, possibly after some pairs were given: use them only at the end."""
        params = {"startup": "true" if startup else "false"}
        timeout = self._startup_timeout if startup else self._timeout
        for key, item in self._walk("v1/decisions/stream", params, timeout, iter_arrays):
            if key in ("new", "deleted"):
                yield key, item

    def active_decisions(self) -> Iterator[Any]:
        """Every active decision (`GET /v1/decisions` with no filter), read one at a time.
        Unlike a stream pull it leaves a running milter's stream cursor alone."""
        return self._walk("v1/decisions", {}, self._startup_timeout, iter_list)

    def _walk(self, path: str, params: dict[str, str], timeout: float,
              walker: Callable[[Iterator[bytes]], Iterator[Any]]) -> Iterator[Any]:
        """GET path and give what `walker` reads from the body as it arrives; a body it
        cannot read is a LapiError of kind decode."""
        with self._open(path, params, timeout) as chunks:
            try:
                yield from walker(chunks)
            except StreamFormatError as exc:
                raise LapiError("decode", self._scrub(f"{path} answer is not usable: "
                                                      f"{exc}")) from exc

    def query(self, ip: str) -> list[Any]:
        """The decisions LAPI holds on one address (Ranges covering it included)."""
        doc = self._get("v1/decisions", {"ip": ip}, self._timeout)
        if doc is None:
            return []
        if not isinstance(doc, list):
            raise LapiError("decode", f"decisions answer is a {type(doc).__name__}, not a list")
        return doc
