"""The SSE decoder: any split of the bytes, any line ending, gives the same events."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_proxy.base.sse import ServerSentEvent, SSEDecoder, SSEError, encode, encode_json


def decode_all(data: bytes, cuts=()) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events, start = [], 0
    for cut in sorted(set(cuts)) + [len(data)]:
        events += decoder.feed(data[start:cut])
        start = cut
    return events + decoder.close()


# Field values: any text without line ends (they are the framing), including CJK and emoji.
value_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
                     max_size=30)
event_name = st.text(st.characters(min_codepoint=33, max_codepoint=0x1F600,
                                   blacklist_categories=("Cs",), blacklist_characters="\r\n:"),
                     min_size=1, max_size=10)


@st.composite
def event_specs(draw):
    data_lines = draw(st.lists(value_text, min_size=1, max_size=4))
    return (draw(st.none() | event_name), data_lines, draw(st.none() | value_text),
            draw(st.booleans()))


def serialize(specs, newline: str) -> bytes:
    out = []
    for name, lines, comment, space in specs:
        sep = ": " if space else ":"
        if comment is not None:
            out.append(f":{comment}{newline}")
        if name is not None:
            out.append(f"event{sep}{name}{newline}")
        for line in lines:
            out.append(f"data{sep}{line}{newline}")
        out.append(newline)
    return "".join(out).encode("utf-8")


def expected(specs) -> list[tuple[str, str]]:
    result = []
    for name, lines, _comment, space in specs:
        # Without the optional space, a value that starts with a space keeps it... except
        # that we serialized "data:" + value, and the decoder strips exactly one leading space.
        values = [line if space else (line[1:] if line.startswith(" ") else line) for line in lines]
        result.append((name if name is not None else "message", "\n".join(values)))
    return result


@settings(max_examples=300, deadline=None)
@given(specs=st.lists(event_specs(), min_size=1, max_size=6),
       newline=st.sampled_from(["\n", "\r\n", "\r"]),
       data=st.data())
def test_any_events_with_any_line_ending_cut_anywhere_decode_the_same(specs, newline, data):
    raw = serialize(specs, newline)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=12))
    events = decode_all(raw, cuts)
    assert [(e.event, e.data) for e in events] == expected(specs)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=40), data=st.data())
def test_encoded_events_round_trip_through_the_decoder_in_any_split(text, data):
    raw = encode(text, "x") + encode_json({"content": text})
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=10))
    events = decode_all(raw, cuts)
    text_lines = text.replace("\r\n", "\n").replace("\r", "\n")
    assert events[0].event == "x" and events[0].data == text_lines
    assert events[1].data.startswith('{"content":')


def test_crlf_cut_between_two_reads_is_one_line_end():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n\r") == [ServerSentEvent("a")]
    assert decoder.feed(b"\ndata: b\r\n\r\n") == [ServerSentEvent("b")]


def test_multibyte_character_cut_between_reads_is_whole():
    raw = "data: 你好🙂\n\n".encode()
    for i in range(len(raw)):
        assert decode_all(raw, [i]) == [ServerSentEvent("你好🙂")]


def test_comments_and_unknown_fields_are_ignored_and_blank_events_not_dispatched():
    assert decode_all(b": hello\n\nfoo: bar\n\nevent: x\n\ndata\n\n") == [ServerSentEvent("")]


def test_id_and_retry_fields_follow_the_spec():
    events = decode_all(b"id: 7\nretry: 1500\ndata: a\n\nid: bad\0id\nretry: x\ndata: b\n\n")
    assert events == [ServerSentEvent("a", id="7", retry=1500), ServerSentEvent("b", id="7", retry=1500)]


def test_leading_bom_is_dropped_once():
    assert decode_all("\ufeffdata: a\n\n".encode()) == [ServerSentEvent("a")]


def test_last_event_without_blank_line_is_dispatched_at_close():
    assert decode_all(b"data: one\n\ndata: two") == [ServerSentEvent("one"), ServerSentEvent("two")]
    assert decode_all(b"data: three\n") == [ServerSentEvent("three")]


def test_several_events_in_one_read_all_come_out():
    assert [e.data for e in SSEDecoder().feed(b"data: 1\n\ndata: 2\n\ndata: 3\n\n")] == ["1", "2", "3"]


def test_runaway_line_is_an_error_not_unbounded_memory():
    decoder = SSEDecoder(max_event_bytes=10_000)
    decoder.feed(b"data: ")
    with pytest.raises(SSEError):
        for _ in range(100):
            decoder.feed(b"x" * 1000)
    assert decoder._partial_len == 0


def test_event_with_too_many_data_lines_is_an_error():
    decoder = SSEDecoder(max_event_bytes=1000)
    with pytest.raises(SSEError):
        decoder.feed(b"data: 0123456789\n" * 200)


def test_invalid_utf8_is_a_clean_error():
    with pytest.raises(SSEError, match="UTF-8"):
        decode_all(b"data: \xff\xfe\n\n")


def test_encode_json_is_one_line_even_for_newlines_and_keeps_unicode():
    assert encode_json({"content": "a\nb 你"}) == 'data: {"content":"a\\nb 你"}\n\n'.encode()
