"""The CrowdSec Local API client: the two requests a bouncer makes, and nothing else.

It speaks HTTP and JSON and turns every failure into one `LapiError` with a short `kind`
(for logs and metrics), so callers never see an httpx exception. The API key travels only
in the `X-Api-Key` header and never appears in an error text.

Every request has a deadline for the whole of it. httpx's own timeouts apply to each
connect, read and write separately, so a LAPI that sends a byte now and then would hold a
live lookup (and the SMTP session waiting on it) without end. The deadline is enforced
below httpx, on the sockets: each connect, read and write waits at most until the
deadline of the request the current thread is making.
"""

from __future__ import annotations

import contextlib
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import certifi
import httpcore
import httpx

try:  # httpcore 0.17 and later (Debian 13, PyPI)
    from httpcore import NetworkBackend, NetworkStream
except ImportError:  # httpcore 0.16 (Debian 12's, with httpx 0.23): the same classes, not exported
    from httpcore.backends.base import NetworkBackend, NetworkStream

from . import __version__
from .jsonstream import StreamFormatError, iter_arrays, iter_list, loads

# CrowdSec's bouncer guidelines name a bouncer crowdsec-<name>-bouncer/vX.Y.Z toward LAPI.
USER_AGENT = f"crowdsec-milter-bouncer/v{__version__}"
# An API key travels as a header value: printable ASCII, spaces only inside.
_HEADER_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")


def header_safe(key: str) -> bool:
    """True when `key` can be sent as an HTTP header value as it is."""
    return _HEADER_VALUE.fullmatch(key) is not None


PULL_TOTAL = 60.0  # seconds a delta pull may take in all
STARTUP_TOTAL = 300.0  # a startup pull or the full list (a million decisions: about 10 s)

_deadline = threading.local()  # .at: monotonic time the current thread's request must end


def _left(phase: float | None, expired: type[Exception]) -> float | None:
    """The wait allowed for one socket operation: its phase timeout, cut to what is left
    of the current request's deadline; `expired` is raised once nothing is left."""
    at = getattr(_deadline, "at", None)
    if at is None:
        return phase
    left = at - time.monotonic()
    if left <= 0:
        raise expired("the request's deadline passed")
    return left if phase is None else min(phase, left)


@contextlib.contextmanager
def _until(at: float) -> Iterator[None]:
    """Socket operations of this thread end by `at` while inside."""
    previous = getattr(_deadline, "at", None)
    _deadline.at = at
    try:
        yield
    finally:
        _deadline.at = previous


class _DeadlineStream(NetworkStream):
    """A connection whose every wait is cut to the current request's deadline."""

    def __init__(self, inner: NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> NetworkStream:
        return _DeadlineStream(self._inner.start_tls(
            ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(NetworkBackend):
    """The transport's own network backend, with connections that honour the deadline.
    Other arguments (local_address; socket_options from httpcore 0.17 on) pass through
    as httpcore gave them, so each httpcore version gets the signature it knows."""

    def __init__(self, inner: NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    **options: Any) -> NetworkStream:
        return _DeadlineStream(self._inner.connect_tcp(
            host, port, _left(timeout, httpcore.ConnectTimeout), **options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            **options: Any) -> NetworkStream:
        return _DeadlineStream(self._inner.connect_unix_socket(
            path, _left(timeout, httpcore.ConnectTimeout), **options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def tls_context(ca: str | None, cert: tuple[str, str] | None) -> ssl.SSLContext:
    """The TLS settings of every LAPI connection: the CA file `ca` (else certifi's bundle,
    as httpx's own default), an optional client certificate, and Python 3.13's strict X.509
    checks on every Python. 3.11 and 3.12 accept a CA without a keyUsage extension that 3.13
    refuses: checking strictly everywhere means a setup that works on Debian 12 keeps working
    after an upgrade to Debian 13."""
    context = ssl.create_default_context(cafile=ca or certifi.where())
    context.verify_flags |= ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN
    if cert:
        context.load_cert_chain(*cert)  # bouncer auth by client certificate
    return context


# OpenSSL's X509_V_ERR_CA_CERT_MISSING_KEY_USAGE: the one strict check an older private CA
# (openssl req -x509 with the default config) fails.
_CA_WITHOUT_KEY_USAGE = 92


def unreachable(exc: BaseException, detail: bool = True) -> str:
    """One line for a request that failed below HTTP (with the exception's text if
    `detail`). A certificate that failed verification gets what is wrong and what to do."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLCertVerificationError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return f"LAPI unreachable: {type(exc).__name__}" + (f": {exc}" if detail else "")
    what = getattr(cause, "verify_message", "") or str(cause)
    if getattr(cause, "verify_code", 0) == _CA_WITHOUT_KEY_USAGE:
        return (f"LAPI's certificate refused: {what}. The CA certificate (the --lapi-ca file) "
                "needs a keyUsage extension with keyCertSign, as strict X.509 checking requires "
                "(Python 3.13's default, applied on every Python): reissue the CA certificate "
                "from its key with keyUsage=critical,keyCertSign,cRLSign")
    return (f"LAPI's certificate refused: {what}. Check that --lapi-ca names the CA that "
            "signed LAPI's certificate, and that both meet strict X.509 rules (RFC 5280)")


class LapiError(Exception):
    """A request that gave no usable answer. `kind` is one word: connect, timeout, auth,
    http, decode, too_large."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class LapiClient:
    """A thread-safe LAPI client for one bouncer key.

    `timeout` bounds each request as a whole (live lookups, health, usage). Stream pulls
    wait at most `timeout` between bytes (a startup pull and the full list at least 30 s)
    and take at most `pull_total` in all (`startup_total` for startup and the full list)."""

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
        pull_total: float = PULL_TOTAL,
        startup_total: float = STARTUP_TOTAL,
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
        self._pull_total = max(pull_total, timeout)
        self._startup_total = max(startup_total, self._startup_timeout)
        self._max_bytes = max_bytes
        context: ssl.SSLContext | bool = False if verify is False else \
            tls_context(verify if isinstance(verify, str) else None, cert)
        transport = httpx.HTTPTransport(
            verify=context,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )
        # httpx has no public way to give its transport a network backend: set the pool's.
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if not isinstance(backend, NetworkBackend):
            raise RuntimeError("this httpx/httpcore cannot take a request deadline")
        pool._network_backend = _DeadlineBackend(backend)  # type: ignore[union-attr]
        self._http = httpx.Client(headers=headers, transport=transport, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    @contextlib.contextmanager
    def _open(self, path: str, params: dict[str, str], timeout: float,
              total: float) -> Iterator[Iterator[bytes]]:
        """GET path; yields an iterator over the body's chunks, at most max_bytes of them,
        all of it within `total` seconds (`timeout` at most for each wait). Every transport
        failure, here or while iterating, becomes a LapiError."""
        at = time.monotonic() + total
        try:
            with _until(at), self._http.stream(
                "GET", self._base + path, params=params, timeout=timeout
            ) as response:
                if response.status_code == 403:
                    raise LapiError("auth", "LAPI refused the API key (403 access forbidden)")
                if response.status_code != 200:
                    raise LapiError("http", f"LAPI answered HTTP {response.status_code}")
                yield self._capped(response.iter_bytes(), at)
        except httpx.TimeoutException as exc:
            raise LapiError("timeout", f"LAPI did not answer within {total:g}s") from exc
        except httpx.HTTPError as exc:
            raise LapiError("connect", self._scrub(unreachable(exc))) from exc

    def _scrub(self, text: str) -> str:
        """`text` without the API key in any form it may take in an exception's text."""
        for secret in self._secrets:
            text = text.replace(secret, "<api-key>")
        return text

    def _capped(self, chunks: Iterator[bytes], at: float) -> Iterator[bytes]:
        """The body's chunks, read by the deadline `at` (the caller's thread reads them)."""
        size = 0
        while True:
            with _until(at):
                chunk = next(chunks, None)
            if chunk is None:
                return
            if time.monotonic() > at:  # chunks that were already buffered arrive at once
                raise httpx.ReadTimeout("the request's deadline passed")
            size += len(chunk)
            if size > self._max_bytes:
                raise LapiError("too_large", f"LAPI answer exceeds {self._max_bytes} bytes")
            yield chunk

    def _get(self, path: str, params: dict[str, str], timeout: float) -> Any:
        """GET a JSON document, reading at most max_bytes of it, all within `timeout`."""
        with self._open(path, params, timeout, timeout) as chunks:
            body = b"".join(chunks)
        try:
            return loads(body)
        except StreamFormatError as exc:
            raise LapiError("decode", f"LAPI answer is not JSON ({len(body)} bytes): "
                                      f"{exc}") from exc

    def health(self) -> int:
        """HTTP status of GET /health (no authentication needed)."""
        try:
            with _until(time.monotonic() + self._timeout):
                return self._http.get(self._base + "health", timeout=self._timeout).status_code
        except httpx.TimeoutException as exc:
            raise LapiError("timeout", f"LAPI did not answer within {self._timeout:g}s") from exc
        except httpx.HTTPError as exc:
            raise LapiError("connect", self._scrub(unreachable(exc, detail=False))) from exc

    def check_key(self, ip: str) -> None:
        """Raise LapiError unless LAPI accepts the key, asking with `HEAD /v1/decisions`:
        LAPI answers it (200, or 403 for a bad key, whatever decisions exist) before it
        looks at the bouncer's stream cursor, in 1.4.6 as in current releases, so it is
        safe with a running stream consumer's key where a GET is not."""
        try:
            with _until(time.monotonic() + self._timeout):
                status = self._http.head(self._base + "v1/decisions", params={"ip": ip},
                                         timeout=self._timeout).status_code
        except httpx.TimeoutException as exc:
            raise LapiError("timeout", f"LAPI did not answer within {self._timeout:g}s") from exc
        except httpx.HTTPError as exc:
            raise LapiError("connect", self._scrub(unreachable(exc, detail=False))) from exc
        if status == 403:
            raise LapiError("auth", "LAPI refused the API key (403 access forbidden)")
        if status != 200:
            raise LapiError("http", f"LAPI answered HTTP {status}")

    def post_json(self, path: str, doc: Any) -> int:
        """POST a JSON document; the HTTP status."""
        try:
            with _until(time.monotonic() + self._timeout):
                return self._http.post(self._base + path, json=doc,
                                       timeout=self._timeout).status_code
        except httpx.TimeoutException as exc:
            raise LapiError("timeout", f"LAPI did not answer within {self._timeout:g}s") from exc
        except httpx.HTTPError as exc:
            raise LapiError("connect", self._scrub(unreachable(exc, detail=False))) from exc

    def stream_items(self, startup: bool, scopes: str = "") -> Iterator[tuple[str, Any]]:
        """One pull, as ("new" | "deleted", decision) pairs read while the body arrives,
        so a startup answer with a million decisions is never held whole in memory.
        Raises LapiError, possibly after some pairs were given: use them only at the end."""
        # dedup=false: by default LAPI keeps only the longest decision per (value, type,
        # scope), so a longer decision we do not select would hide a shorter one we do
        # (crowdsec#2014); 1.4.6 honours it on startup and delta pulls alike.
        params = {"startup": "true" if startup else "false", "dedup": "false"}
        if scopes:  # LAPI's default is ip,range
            params["scopes"] = scopes
        timeout, total = ((self._startup_timeout, self._startup_total) if startup
                          else (self._timeout, self._pull_total))
        for key, item in self._walk("v1/decisions/stream", params, timeout, total,
                                    iter_arrays):
            if key in ("new", "deleted"):
                yield key, item

    def active_decisions(self) -> Iterator[Any]:
        """Every active decision (`GET /v1/decisions` with no filter), read one at a time.
        LAPI moves the key's stream cursor on this request when its last pull is a minute
        old or more: see tools.py before using it with a stream consumer's key."""
        return self._walk("v1/decisions", {}, self._startup_timeout, self._startup_total,
                          iter_list)

    def _walk(self, path: str, params: dict[str, str], timeout: float, total: float,
              walker: Callable[[Iterator[bytes]], Iterator[Any]]) -> Iterator[Any]:
        """GET path and give what `walker` reads from the body as it arrives; a body it
        cannot read is a LapiError of kind decode."""
        with self._open(path, params, timeout, total) as chunks:
            try:
                yield from walker(chunks)
            except StreamFormatError as exc:
                raise LapiError("decode", self._scrub(f"{path} answer is not usable: "
                                                      f"{exc}")) from exc

    def query(self, ip: str) -> list[Any]:
        """The decisions LAPI holds on one address (Ranges covering it included). Like
        active_decisions, it can move the key's stream cursor."""
        return self._query({"ip": ip})

    def query_scope(self, scope: str, value: str) -> list[Any]:
        """The decisions LAPI holds on one value of a scope (`scopes=Country&value=FR`,
        answered so by 1.4.6 as by current releases)."""
        return self._query({"scopes": scope, "value": value})

    def _query(self, params: dict[str, str]) -> list[Any]:
        doc = self._get("v1/decisions", params, self._timeout)
        if doc is None:
            return []
        if not isinstance(doc, list):
            raise LapiError("decode", f"decisions answer is a {type(doc).__name__}, not a list")
        return doc
