"""Preference data: every published layout, bad records as file:line, the store's feedback, and the
prepared dataset (context tokenized once, replies as the template ends them)."""

from __future__ import annotations

import datasets
import pytest

from parley.data.prepare import PrepareConfig, prepare
from parley.data.sources import parse
from parley.errors import ConfigError, DataError
from parley.store import Store

from .conftest import write_jsonl

Q = "What is the capital of France?"
GOOD, WORSE = "Paris.", "Lyon, I think."
LAYOUTS = {
    "trl strings": {"prompt": Q, "chosen": GOOD, "rejected": WORSE},
    "trl messages": {"prompt": [{"role": "user", "content": Q}], "chosen": [{"role": "assistant", "content": GOOD}],
                     "rejected": [{"role": "assistant", "content": WORSE}]},
    "trl implicit": {"chosen": [{"role": "user", "content": Q}, {"role": "assistant", "content": GOOD}],
                     "rejected": [{"role": "user", "content": Q}, {"role": "assistant", "content": WORSE}]},
    "ultrafeedback binarized": {"prompt": Q, "prompt_id": "x", "score_chosen": 9.0, "score_rejected": 2.0,
                                "chosen": [{"role": "user", "content": Q}, {"role": "assistant", "content": GOOD}],
                                "rejected": [{"role": "user", "content": Q}, {"role": "assistant", "content": WORSE}]},
    "hh-rlhf": {"chosen": f"\n\nHuman: {Q}\n\nAssistant: {GOOD}", "rejected": f"\n\nHuman: {Q}\n\nAssistant: {WORSE}"},
    "ultrafeedback raw": {"instruction": Q, "completions": [{"response": WORSE, "overall_score": 3},
                                                            {"response": GOOD, "overall_score": 8.5},
                                                            {"response": "No idea.", "overall_score": 1}]},
}


def _read(path):
    return list(parse(str(path)).read())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_published_layout_reads_as_one_pair(tmp_path, layout):
    (pref,) = _read(write_jsonl(tmp_path / "p.jsonl", [LAYOUTS[layout]]))
    expected_rejected = "No idea." if layout == "ultrafeedback raw" else WORSE  # binarized: best vs worst
    assert (pref.prompt, pref.chosen, pref.rejected) == ([{"role": "user", "content": Q}], GOOD, expected_rejected)
    assert pref.where.endswith("p.jsonl:1")


def test_multi_turn_hh_keeps_the_shared_turns_as_context(tmp_path):
    talk = "\n\nHuman: hi\n\nAssistant: Hello!\n\nHuman: " + Q + "\n\nAssistant: "
    (pref,) = _read(write_jsonl(tmp_path / "hh.jsonl", [{"chosen": talk + GOOD, "rejected": talk + WORSE}]))
    assert [m["role"] for m in pref.prompt] == ["user", "assistant", "user"] and pref.prompt[1]["content"] == "Hello!"


def test_unpaired_labels(tmp_path):
    good, bad = _read(write_jsonl(tmp_path / "kto.jsonl", [{"prompt": Q, "completion": GOOD, "label": True},
                                                           {"prompt": Q, "completion": WORSE, "label": False}]))
    assert (good.chosen, good.rejected, bad.chosen, bad.rejected) == (GOOD, None, None, WORSE)


def test_malformed_records_are_file_line_what_is_wrong(tmp_path, chat_tokenizer):
    rows = [LAYOUTS["trl strings"],
            {"prompt": Q, "chosen": GOOD, "rejected": GOOD},
            {"chosen": "just text", "rejected": "other text"},
            {"chosen": f"\n\nHuman: {Q}\n\nAssistant: a", "rejected": f"\n\nHuman: other\n\nAssistant: b"},
            {"instruction": Q, "completions": [{"response": "a", "overall_score": 5}, {"response": "b", "overall_score": 5}]},
            {"prompt": Q, "completion": GOOD, "label": "yes"},
            {"prompt": [{"role": "assistant", "content": "hi"}], "chosen": GOOD, "rejected": WORSE}]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as e:
        prepare([f"prefs:{path}"], tmp_path / "out", chat_tokenizer, chat_tokenizer.chat_template)
    message = str(e.value)
    assert message.startswith("6 bad records")
    for line, words in [(2, "the same text"), (3, 'no "prompt"'), (4, "differ before their last"),
                        (5, "same overall_score"), (6, '"label" must be true'), (7, "the last message must be the user")]:
        assert f"bad.jsonl:{line}: " in message and words in message.split(f"bad.jsonl:{line}: ")[1].split("\n")[0]
    assert not (tmp_path / "out").exists()


def test_prepared_rows_share_the_context_and_end_replies_as_the_template_does(tmp_path, chat_tokenizer):
    rows = [dict(LAYOUTS["trl strings"], prompt=f"{Q} ({i})") for i in range(20)]
    path = write_jsonl(tmp_path / "p.jsonl", rows + [{"prompt": "Hi", "completion": "Hello!", "label": True}])
    manifest = prepare([str(path)], tmp_path / "out", chat_tokenizer, chat_tokenizer.chat_template,
                       PrepareConfig(val_ratio=0.2), model="test")
    data = datasets.load_from_disk(str(tmp_path / "out"))
    assert manifest.settings["kind"] == "preference"
    assert manifest.splits["train"]["records"] + manifest.splits["validation"]["records"] == 21
    row = next(r for r in data["train"] if r["rejected_ids"])
    decode = chat_tokenizer.decode
    assert decode(row["prompt_ids"]).endswith("<|im_start|>assistant\n")
    assert decode(row["chosen_ids"]) == GOOD + "<|im_end|>" and decode(row["rejected_ids"]) == WORSE + "<|im_end|>"
    unpaired = [r for split in data.values() for r in split if not r["rejected_ids"]]
    assert len(unpaired) == 1 and decode(unpaired[0]["chosen_ids"]) == "Hello!<|im_end|>"


def test_long_rows_are_cut_to_fit(tmp_path, chat_tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "word " * 300, "chosen": "yes " * 300, "rejected": "no"}])
    manifest = prepare([str(path)], tmp_path / "out", chat_tokenizer, chat_tokenizer.chat_template,
                       PrepareConfig(max_len=64, val_ratio=0.0))
    row = datasets.load_from_disk(str(tmp_path / "out"))["train"][0]
    assert len(row["prompt_ids"]) + len(row["chosen_ids"]) == 64 and len(row["chosen_ids"]) == 32
    assert manifest.length_changes["truncated"] == 1


def test_preferences_and_conversations_are_not_mixed(tmp_path, chat_tokenizer):
    prefs = write_jsonl(tmp_path / "p.jsonl", [LAYOUTS["trl strings"]])
    chat = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}])
    with pytest.raises(ConfigError, match="prepare them separately"):
        prepare([str(prefs), str(chat)], tmp_path / "out", chat_tokenizer, chat_tokenizer.chat_template)


def test_the_stores_feedback_is_a_source(tmp_path, chat_tokenizer, monkeypatch):
    monkeypatch.setenv("PARLEY_HOME", str(tmp_path))
    store = Store()
    cid = store.new_conversation(model="smollm2", system="Be brief.")
    store.add_message(cid, "user", Q)
    reply = store.add_message(cid, "assistant", WORSE)
    store.edit_reply(cid, reply, GOOD)  # an edit: a pair
    other = store.new_conversation(model="runs/x/final")
    store.add_message(other, "user", "hi")
    store.rate(other, store.add_message(other, "assistant", "Hello!"), True)  # a thumbs up: unpaired
    store.close()

    every = list(parse("feedback").read())
    assert [(p.chosen, p.rejected, p.meta["kind"]) for p in every] == [(GOOD, WORSE, "edit"), ("Hello!", None, "good")]
    assert every[0].prompt == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": Q}]
    assert [p.chosen for p in parse("feedback,model=smollm2").read()] == [GOOD]
    with pytest.raises(DataError, match="no records found"):
        list(parse("feedback,since=2999-01-01").read())
    with pytest.raises(ConfigError, match="since='last week' is not a date"):
        list(parse("feedback,since=last week").read())
    with pytest.raises(DataError, match="no such conversation database"):
        list(parse(f"feedback:{tmp_path}/missing.db").read())
    manifest = prepare(["feedback"], tmp_path / "out", chat_tokenizer, chat_tokenizer.chat_template,
                       PrepareConfig(val_ratio=0.0))
    assert manifest.sources[0]["pairs"] == 1 and manifest.sources[0]["unpaired"] == 1


def test_stats_and_show_read_a_preference_dataset(tmp_path, chat_tokenizer):
    from rich.console import Console

    from parley.data.view import show, stats

    path = write_jsonl(tmp_path / "p.jsonl", [LAYOUTS["trl strings"]])
    prepare([str(path)], tmp_path / "out", chat_tokenizer, chat_tokenizer.chat_template, PrepareConfig(val_ratio=0.0))
    report = stats(tmp_path / "out")
    assert report["splits"]["train"]["examples"] == 1 and report["splits"]["train"]["loss_tokens"] > 0
    console = Console(record=True, width=200)
    show(tmp_path / "out", 0, console=console)
    text = console.export_text()
    assert Q in text and f"chosen: {GOOD}" in text and f"rejected: {WORSE}" in text
