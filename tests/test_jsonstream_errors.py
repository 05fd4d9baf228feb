"""The stream reader's refusals say what was wrong, and its memory bound holds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from crowdsec_milter.jsonstream import MAX_ELEMENT, StreamFormatError, iter_arrays, iter_list


@pytest.mark.parametrize(("data", "message"), [
    (b'{"new": 5}', "'new': expected a list or null, found '5'"),
    (b'{"new": nul}', "'new': bad JSON: Expecting value"),
    (b'{"new": [1 2]}', "'new': expected ',' or ']', found '2'"),
    (b'{5: []}', "object key is not a string"),
    (b'{"new" []}', "expected ':', found '['"),
    (b'[]', "expected '{', found '['"),
    (b'{}x', "text after the JSON value"),
    (b'{"new":[]} x', "text after the JSON value"),
    (b'{"new": ["\xc3', "'new': not UTF-8: unexpected end of data"),
    (b'{"new": ["\xff"]}', "not UTF-8: invalid start byte"),
])
def test_refusals_say_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(StreamFormatError) as info:
        list(iter_arrays([data]))
    assert str(info.value) == message


def test_list_refusals_say_what_is_wrong() -> None:
    for data, message in ((b"true", "expected a list or null, found 't'"),
                          (b"null", None), (b"[1] 2", "text after the JSON value")):
        if message is None:
            assert list(iter_list([data])) == []
            continue
        with pytest.raises(StreamFormatError) as info:
            list(iter_list([data]))
        assert str(info.value) == message


def test_an_empty_chunk_mid_answer_is_not_its_end() -> None:
    assert list(iter_arrays([b'{"new":', b"", b" ", b"", b'[1, 2]}'])) == [("new", 1), ("new", 2)]
    assert list(iter_list([b"[1,", b"", b"2]"])) == [1, 2]


def test_an_element_may_be_exactly_the_limit() -> None:
    head = b'["' + b"a" * (MAX_ELEMENT - 1)
    assert list(iter_list([head, b'a"]'])) == ["a" * MAX_ELEMENT]


def test_many_small_elements_in_one_big_chunk_are_fine() -> None:
    first = b'{"new":[' + b'"x",' * (MAX_ELEMENT // 3) + b'"ab'
    got = list(iter_arrays([first, b'c"]}']))
    assert len(got) == MAX_ELEMENT // 3 + 1 and got[-1] == ("new", "abc")


def test_an_endless_element_is_refused_before_the_answer_is_all_read() -> None:
    sent = []

    def chunks() -> Iterator[bytes]:
        yield b'{"new":["'
        for _ in range(100):  # 6.4 MB in all, far past the 1 MB bound
            sent.append(1)
            yield b"a" * 65536

    with pytest.raises(StreamFormatError, match="bad JSON"):
        list(iter_arrays(chunks()))
    assert len(sent) < 30
