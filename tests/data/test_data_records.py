from parley.data.records import Bad, Record, chat_record, message_problem, text_record


def test_good_conversation_becomes_a_record_with_only_role_and_content():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi", "name": "ann"},
        {"role": "assistant", "content": "Hello", "weight": 1},
    ]
    record = chat_record(messages, "a.jsonl", 3)
    assert isinstance(record, Record) and record.kind == "chat" and record.where == "a.jsonl:3"
    assert record.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]


def test_unlearned_assistant_turn_keeps_weight_zero():
    record = chat_record(
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0},
         {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}], "f", 1)
    assert record.messages[1] == {"role": "assistant", "content": "b", "weight": 0}


def test_each_problem_is_named():
    cases = {
        "no messages": [],
        "role 'tool'": [{"role": "tool", "content": "x"}],
        "no text content": [{"role": "user", "content": None}],
        "system message after the first": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}],
        "open with a user message": [{"role": "assistant", "content": "x"}],
        "no assistant reply": [{"role": "user", "content": "x"}],
    }
    for expected, messages in cases.items():
        assert expected in message_problem(messages), expected
    only_unlearned = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 0}]
    assert "no assistant reply" in message_problem(only_unlearned)
    bad = chat_record([{"role": "user", "content": "x"}], "f.jsonl", 7)
    assert isinstance(bad, Bad) and str(bad) == "f.jsonl:7: no assistant reply to learn from"


def test_content_hash_depends_on_messages_only():
    a = chat_record([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "one", 1)
    b = chat_record([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "two", 9)
    c = chat_record([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y "}], "one", 1)
    assert a.content_hash() == b.content_hash() != c.content_hash()
    assert text_record("print(1)\r\n", "f.py").kind == "text"
