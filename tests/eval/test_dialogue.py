"""Dialogue BLEU/ROUGE: the scores are the libraries' own; conversations and replies line up."""

from __future__ import annotations

import json

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from parley.engine import LocalEngine
from parley.errors import ConfigError
from parley.eval.dialogue import DialogueConfig, conversations, generate_and_score, score

REFS = ["The cat sat on the mat.", "I like running in the park every morning."]
HYPS = ["A cat was sitting on the mat.", "I liked to run in parks each morning."]


def test_scores_are_sacrebleu_and_stemmed_rouge():
    metrics, details = score(REFS, HYPS)
    assert metrics["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = sum(scorer.score(r, h)["rougeL"].fmeasure for r, h in zip(REFS, HYPS)) / 2
    assert metrics["rougeL"] == pytest.approx(expected)
    # Stemming on: "running"/"run" and "parks"/"park" count as the same word.
    plain = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False).score(REFS[1], HYPS[1])["rouge1"].fmeasure
    assert scorer.score(REFS[1], HYPS[1])["rougeL"].fmeasure > plain
    assert details["sacrebleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert "warning" not in details
    perfect, _ = score(REFS, REFS)
    assert perfect == {"bleu": pytest.approx(100.0), "rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}


def test_mostly_non_ascii_references_are_warned_about():
    metrics, details = score(["Привет, как дела?", "hello there"], ["Привет, как дела?", "hello there"])
    assert details["references_mostly_non_ascii"] == 1
    assert "rouge-score drops non-ASCII" in details["warning"]
    assert metrics["rouge1"] == pytest.approx(0.5)  # the Russian pair scores 0 even though identical


def write_chats(path, conversations_):
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in conversations_))
    return f"chat:{path}"


def test_the_last_assistant_turn_is_the_reference(tmp_path):
    spec = write_chats(tmp_path / "c.jsonl", [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
         {"role": "assistant", "content": "See you."}, {"role": "user", "content": "(leaves)"}],
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
    ])
    found = conversations([spec], DialogueConfig(split="all"))
    assert [(len(h), ref) for h, ref, _ in found] == [(4, "See you."), (1, "4")]
    assert found[0][0][0] == {"role": "system", "content": "Be brief."}
    assert found[1][2].endswith("c.jsonl:2")
    assert len(conversations([spec], DialogueConfig(split="all", limit=1))) == 1


def test_held_out_split_is_a_small_stable_part_of_chatterbot():
    held_out = conversations(["chatterbot"], DialogueConfig())
    assert 10 < len(held_out) < 200
    assert held_out == conversations(["chatterbot"], DialogueConfig())
    with pytest.raises(ConfigError, match="--split"):
        DialogueConfig(split="train")


def test_generate_and_score_with_a_tiny_model(llama_loaded, tmp_path):
    spec = write_chats(tmp_path / "c.jsonl", [
        [{"role": "user", "content": f"Say {word}"}, {"role": "assistant", "content": word}] for word in "abc"
    ])
    config = DialogueConfig(split="all", max_new_tokens=4, examples=2, batch=2)
    found = conversations([spec], config)
    results = generate_and_score(LocalEngine(llama_loaded), found, config)
    assert results["details"]["conversations"] == 3 and len(results["examples"]) == 2
    assert [r["reference"] for r in results["replies"]] == ["a", "b", "c"]
    assert set(results["metrics"]) == {"bleu", "rouge1", "rouge2", "rougeL"}
