"""Parley's one tool format (parley/tools.py): writing tools and calls for the model, reading replies back."""

import json

from parley.tools import parse_forced, parse_reply, plain_messages, releasable

ADD = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}


def test_a_tool_history_becomes_plain_messages_in_the_documented_format():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+3 and 4+5?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}},
            {"id": "b", "type": "function", "function": {"name": "add", "arguments": '{"a": 4, "b": 5}'}}]},
        {"role": "tool", "tool_call_id": "a", "content": "5"},
        {"role": "tool", "tool_call_id": "b", "content": "9"},
    ]
    plain = plain_messages(messages, [ADD])
    assert [m["role"] for m in plain] == ["system", "user", "assistant", "user"]
    assert plain[0]["content"].startswith("Be brief.\n\nYou may call functions")
    assert json.dumps(ADD) in plain[0]["content"]
    assert plain[2]["content"] == ('<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>\n'
                                   '<tool_call>\n{"name": "add", "arguments": {"a": 4, "b": 5}}\n</tool_call>')
    assert plain[3]["content"] == "<tool_response>\n5\n</tool_response>\n<tool_response>\n9\n</tool_response>"
    assert all(set(m) == {"role", "content"} for m in plain)


def test_calls_are_read_back_from_a_free_reply():
    content, calls = parse_reply('Let me add.\n<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>\n'
                                 '<tool_call>{"name": "add", "arguments": {"a": 2}}')  # the last close tag may be cut
    assert content == "Let me add."
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == \
        [("add", {"a": 1}), ("add", {"a": 2})]
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)


def test_a_reply_with_a_broken_block_stays_text():
    assert parse_reply("<tool_call>{not json}</tool_call>") == ("<tool_call>{not json}</tool_call>", [])
    assert parse_reply("no calls here") == ("no calls here", [])


def test_streamed_text_is_held_from_where_a_call_may_start():
    assert releasable("Sure <tool_call>{") == len("Sure ")
    assert releasable("Sure <tool_") == len("Sure ")
    assert releasable("a < b") == len("a < b")


def test_forced_replies_are_parsed_by_their_shape():
    [named] = parse_forced('{"a": 1}', "add")
    assert named["function"] == {"name": "add", "arguments": '{"a": 1}'}
    pair = parse_forced('[{"name": "add", "arguments": {}}, {"name": "mul", "arguments": {"x": 2}}]', None)
    assert [c["function"]["name"] for c in pair] == ["add", "mul"]
    assert parse_forced('{"name": "add", "argu', None) is None  # cut short by max_tokens


def test_a_cut_array_of_calls_keeps_the_finished_distinct_ones():
    from parley.tools import salvage_calls

    looped = '[{"name": "add", "arguments": {"a": 2, "b": 3}}, {"name": "add", "arguments": {"a": 2, "b": 3}}, ' \
             '{"name": "mul", "arguments": {"a": 1}}, {"name": "add", "argu'
    calls = salvage_calls(looped)
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == \
        [("add", '{"a": 2, "b": 3}'), ("mul", '{"a": 1}')]
    assert salvage_calls('[{"name": "add", "argu') == []
