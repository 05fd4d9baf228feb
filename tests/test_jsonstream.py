"""The streaming reader of stream answers agrees with json.loads, whatever the chunking."""

from __future__ import annotations

import json

import pytest
from crowdsec_milter.jsonstream import StreamFormatError, iter_arrays, iter_list
from hypothesis import given
from hypothesis import strategies as st


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


def expected(doc: dict) -> list[tuple[str, object]]:
    return [(k, e) for k, v in doc.items() if v is not None for e in v]


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(),
                    st.floats(allow_nan=False, allow_infinity=False))
elements = st.one_of(scalars, st.dictionaries(st.text(), scalars, max_size=5),
                     st.lists(scalars, max_size=3))
docs = st.dictionaries(st.sampled_from(["new", "deleted", "other"]),
                       st.one_of(st.none(), st.lists(elements, max_size=8)), max_size=3)


@given(doc=docs, size=st.integers(1, 64), indent=st.sampled_from([None, 0, 2]))
def test_matches_json_loads_for_any_chunking(doc: dict, size: int, indent: int | None) -> None:
    data = json.dumps(doc, indent=indent, ensure_ascii=False).encode()
    assert list(iter_arrays(chunked(data, size))) == expected(doc)


def test_utf8_split_inside_a_character() -> None:
    data = json.dumps({"new": [{"scenario": "é€𝄞" * 10}]}, ensure_ascii=False).encode()
    for size in range(1, 8):
        assert next(iter(iter_arrays(chunked(data, size))))[1]["scenario"] == "é€𝄞" * 10


def test_number_split_across_chunks() -> None:
    assert list(iter_arrays([b'{"new": [12', b'345]}'])) == [("new", 12345)]


@pytest.mark.parametrize(
    "body",
    [b"", b"[]", b"null", b'{"new": 5}', b'{"new": {"a": 1}}', b'{"new": [1, 2',
     b'{"new": [1 2]}', b'{"new": [1]} x', b'{"new": [1],}', b"garbage", b'{"new" [1]}',
     b'{5: [1]}', b'{"new": "x"}'],
)
def test_malformed_answers_raise(body: bytes) -> None:
    with pytest.raises(StreamFormatError):
        list(iter_arrays(chunked(body, 3)))


def test_empty_object_and_nulls() -> None:
    assert list(iter_arrays([b"{}"])) == []
    assert list(iter_arrays([b'{"new": null, "deleted": null}'])) == []
    assert list(iter_arrays([b'{"new": [], "deleted": []}'])) == []


@given(items=st.one_of(st.none(), st.lists(elements, max_size=8)), size=st.integers(1, 64),
       indent=st.sampled_from([None, 0, 2]))
def test_list_matches_json_loads_for_any_chunking(items: list | None, size: int,
                                                  indent: int | None) -> None:
    data = json.dumps(items, indent=indent, ensure_ascii=False).encode()
    assert list(iter_list(chunked(data, size))) == (items or [])


@pytest.mark.parametrize(
    "body", [b"", b"{}", b'{"new": []}', b"5", b'"x"', b"[1, 2", b"[1 2]", b"[1] x", b"[1,]",
             b"nul", b"null x", b"true"],
)
def test_malformed_lists_raise(body: bytes) -> None:
    with pytest.raises(StreamFormatError):
        list(iter_list(chunked(body, 3)))
