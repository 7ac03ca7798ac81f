"""The chunk reader: OpenAI chunks -> deltas, tolerant of what real upstreams send."""

from __future__ import annotations

import json

import pytest

from gpt_proxy.base.errors import UpstreamError
from gpt_proxy.base.sse import ServerSentEvent
from gpt_proxy.upstream.chunks import ChunkReader

from .fake_upstream import chunk_json


def ev(obj, event="message") -> ServerSentEvent:
    return ServerSentEvent(obj if isinstance(obj, str) else json.dumps(obj), event)


def run(*events):
    reader = ChunkReader()
    return list(reader.deltas(list(events)))


def test_content_reasoning_finish_usage_and_model_are_read():
    deltas = run(ev(chunk_json("", role="assistant")), ev(chunk_json(reasoning="think")),
                 ev(chunk_json("Hi")), ev(chunk_json(finish="stop")),
                 ev(chunk_json(choices=False, usage={"total_tokens": 3}, model="m2")), ev("[DONE]"))
    assert [(d.kind, d.text) for d in deltas[:-1]] == [("reasoning", "think"), ("content", "Hi")]
    done = deltas[-1]
    assert (done.kind, done.finish_reason, done.usage, done.model) == ("done", "stop", {"total_tokens": 3}, "m2")


def test_role_only_and_empty_choices_and_null_content_produce_no_text():
    deltas = run(ev(chunk_json(None, role="assistant")), ev({"choices": [], "prompt_filter_results": []}),
                 ev({"choices": [{"index": 0, "delta": {"content": None}}]}),
                 ev({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}), ev("[DONE]"))
    assert [d.kind for d in deltas] == ["done"]


def test_reasoning_field_named_reasoning_is_read_too():
    deltas = run(ev({"choices": [{"index": 0, "delta": {"reasoning": "r"}, "finish_reason": "stop"}]}))
    assert [(d.kind, d.text) for d in deltas] == [("reasoning", "r"), ("done", "")]


def test_content_as_list_of_parts_is_joined():
    deltas = run(ev({"choices": [{"delta": {"content": [{"type": "text", "text": "a"}, "b"]},
                                  "finish_reason": "stop"}]}))
    assert deltas[0].text == "ab"


def test_other_choice_indexes_are_ignored():
    deltas = run(ev({"choices": [{"index": 1, "delta": {"content": "no"}},
                                 {"index": 0, "delta": {"content": "yes"}, "finish_reason": "stop"}]}))
    assert [d.text for d in deltas if d.kind == "content"] == ["yes"]


def test_error_chunk_raises_with_the_upstream_message():
    with pytest.raises(UpstreamError, match="overloaded"):
        run(ev(chunk_json("a")), ev({"error": {"message": "overloaded", "type": "server_error"}}))


def test_error_event_type_raises():
    with pytest.raises(UpstreamError, match="boom"):
        run(ev({"message": "boom"}, event="error"))
    with pytest.raises(UpstreamError, match="plain words"):
        run(ev("plain words", event="error"))


def test_malformed_json_raises():
    with pytest.raises(UpstreamError, match="malformed"):
        run(ev("{not json"))
    with pytest.raises(UpstreamError, match="malformed"):
        run(ev("[1, 2]"))


def test_stream_ending_without_done_is_fine_after_a_finish_reason():
    deltas = run(ev(chunk_json("a")), ev(chunk_json(finish="length")))
    assert deltas[-1].finish_reason == "length"


def test_stream_ending_without_done_or_finish_is_an_early_end():
    with pytest.raises(UpstreamError, match="ended early"):
        run(ev(chunk_json("a")))


def test_events_after_done_are_not_read():
    deltas = run(ev(chunk_json("a", finish="stop")), ev("[DONE]"), ev(chunk_json("late")))
    assert [d.text for d in deltas if d.kind == "content"] == ["a"]


def test_non_streamed_completion_message_is_read():
    deltas = run(ev({"choices": [{"index": 0, "message": {"role": "assistant", "content": "whole"},
                                  "finish_reason": "stop"}], "usage": {"total_tokens": 1}}))
    assert [(d.kind, d.text) for d in deltas] == [("content", "whole"), ("done", "")]


def test_chunks_on_consecutive_data_lines_without_blank_lines_are_each_read():
    joined = "\n".join(json.dumps(c) for c in (chunk_json("a"), chunk_json("b", finish="stop")))
    deltas = run(ServerSentEvent(joined))
    assert [(d.kind, d.text) for d in deltas] == [("content", "a"), ("content", "b"), ("done", "")]


def test_a_surrogate_pair_split_across_chunks_is_joined_and_a_lone_one_replaced():
    raw = ['{"choices":[{"index":0,"delta":{"content":"ok \\ud83d"}}]}',
           '{"choices":[{"index":0,"delta":{"content":"\\ude00!"}}]}',
           '{"choices":[{"index":0,"delta":{"content":"a\\ude00b\\ud83dc"}}]}',
           '{"choices":[{"index":0,"delta":{"reasoning_content":"\\ud83e"}}]}',
           '{"choices":[{"index":0,"delta":{"reasoning_content":"\\udd14"}}]}']
    deltas = run(*[ev(text) for text in raw], ev(chunk_json(finish="stop")))
    texts = [(d.kind, d.text) for d in deltas[:-1]]
    assert texts == [("content", "ok "), ("content", "\U0001F600!"), ("content", "a\ufffdb\ufffdc"),
                     ("reasoning", "\U0001F914")]
    for _, text in texts:
        text.encode("utf-8")  # every delta can be written
