"""Reading LAPI's stream answer one decision at a time.

`json.loads` of a startup answer with 1M decisions briefly needs about 0.9 GB, several times
what the decisions take once indexed. This reader walks the top-level object
(`{"new": [...], "deleted": [...]}`) itself and hands each array element to the C-accelerated
`json.JSONDecoder.raw_decode` as soon as its bytes have arrived, so memory stays at one
chunk plus one decision. Pure: it reads from any iterable of byte chunks.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Iterator
from typing import Any

_WS = " \t\r\n"
_NUMBER = "0123456789.eE+-"
# A single decision is a few hundred bytes; this much unparsable text is garbage.
MAX_ELEMENT = 1 << 20


class StreamFormatError(ValueError):
    """The answer is not a JSON object of arrays (or nulls)."""


class LongNumber:
    """A JSON integer with more digits than Python converts from text (4,300 by default,
    `sys.set_int_max_str_digits`). It stands in for the number, so the decision holding it
    is refused for a wrong type, and skipped and counted, instead of the whole answer
    failing with a ValueError."""

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"<a number of {self.digits} digits>"


def _int(text: str) -> int | LongNumber:
    try:
        return int(text)
    except ValueError:
        return LongNumber(len(text.lstrip("-")))


# Used only to read again a value the plain decoder refused for a too-long integer: a
# parse_int hook costs a Python call per integer, so the usual path goes without it.
_LENIENT = json.JSONDecoder(parse_int=_int)
_TOO_DEEP = "JSON nested too deep"


def loads(data: bytes) -> Any:
    """A whole JSON document (a live answer), integers too long to convert read as
    LongNumber; StreamFormatError for anything that is not JSON, or nested deeper than
    the decoder's recursion allows."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StreamFormatError(f"not UTF-8: {exc.reason}") from None
    try:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise
        except ValueError:  # an integer over the conversion limit
            return _LENIENT.decode(text)
    except json.JSONDecodeError as exc:
        raise StreamFormatError(f"bad JSON: {exc.msg}") from None
    except RecursionError:
        raise StreamFormatError(_TOO_DEEP) from None


class _Reader:
    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._json = json.JSONDecoder()
        self.buf = ""
        self.pos = 0
        self.eof = False

    def more(self) -> bool:
        """Append the next chunk to the buffer; False at the end of the answer."""
        if self.eof:
            return False
        try:
            return self._more()
        except UnicodeDecodeError as exc:
            raise StreamFormatError(f"not UTF-8: {exc.reason}") from None

    def _more(self) -> bool:
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self.buf = self.buf[self.pos:] + self._utf8.decode(b"", final=True)
            self.eof = True
        else:
            self.buf = self.buf[self.pos:] + self._utf8.decode(chunk)
        self.pos = 0
        return not self.eof or self.pos < len(self.buf)

    def peek(self) -> str:
        """The next non-blank character (not consumed); '' at the end."""
        pos = self.pos
        if pos < len(self.buf) and self.buf[pos] not in _WS:
            return self.buf[pos]  # the common case: LAPI writes compact JSON
        while True:
            buf, pos = self.buf, self.pos
            while pos < len(buf) and buf[pos] in _WS:
                pos += 1
            self.pos = pos
            if pos < len(buf):
                return buf[pos]
            if self.eof or not self.more():
                return ""

    def expect(self, char: str) -> None:
        got = self.peek()
        if got != char:
            raise StreamFormatError(f"expected {char!r}, found {got[:1]!r}")
        self.pos += 1

    def closes(self, close: str) -> bool:
        """After an item: consume ',' (False, more follow) or `close` (True, the end)."""
        sep = self.peek()
        self.pos += 1
        if sep == close:
            return True
        if sep != ",":
            raise StreamFormatError(f"expected ',' or {close!r}, found {sep!r}")
        return False

    def value(self) -> Any:
        """One complete JSON value, reading more chunks until it is whole."""
        self.peek()
        decoder = self._json
        while True:
            try:
                value, end = decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                if len(self.buf) - self.pos > MAX_ELEMENT or self.eof or not self.more():
                    raise StreamFormatError(f"bad JSON: {exc.msg}") from None
                continue
            except ValueError:  # an integer over the conversion limit: read it again
                decoder = _LENIENT
                continue
            except RecursionError:
                raise StreamFormatError(_TOO_DEEP) from None
            # a number may go on in the next chunk ("0" then ".5")
            if (isinstance(value, (int, float, LongNumber)) and not self.eof
                    and (end == len(self.buf) or self.buf[end] in _NUMBER) and self.more()):
                continue
            self.pos = end
            return value


def _elements(r: _Reader) -> Iterator[Any]:
    """The elements of the array whose '[' is next, or nothing for a `null` there."""
    head = r.peek()
    if head not in ("[", "n"):  # refused before decoding what may be a large value
        raise StreamFormatError(f"expected a list or null, found {head[:1]!r}")
    if head != "[":
        value = r.value()
        if value is not None:
            raise StreamFormatError(f"a {type(value).__name__}, not a list")
        return
    r.pos += 1
    if r.peek() == "]":
        r.pos += 1
        return
    while True:
        yield r.value()
        if r.closes("]"):
            return


def iter_arrays(chunks: Iterable[bytes]) -> Iterator[tuple[str, Any]]:
    """(key, element) for each element of each array in the top-level object.

    `null` counts as an empty array (LAPI up to 1.7.8 sends it for empty lists). A value
    that is neither raises StreamFormatError, as does anything after the object.
    """
    r = _Reader(chunks)
    r.expect("{")
    if r.peek() == "}":
        r.pos += 1
    else:
        while True:
            key = r.value()
            if not isinstance(key, str):
                raise StreamFormatError("object key is not a string")
            r.expect(":")
            try:
                for element in _elements(r):
                    yield key, element
            except StreamFormatError as exc:
                raise StreamFormatError(f"{key!r}: {exc}") from None
            if r.closes("}"):
                break
    _end(r)


def iter_list(chunks: Iterable[bytes]) -> Iterator[Any]:
    """Each element of a top-level array (`GET /v1/decisions`); `null` is an empty one."""
    r = _Reader(chunks)
    yield from _elements(r)
    _end(r)


def _end(r: _Reader) -> None:
    if r.peek() != "":
        raise StreamFormatError("text after the JSON value")
