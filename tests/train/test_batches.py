"""Data order, weights and sharding (batches.py), and the checkpoint directory rules (checkpoint.py)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from parley.train import checkpoint
from parley.train.batches import IGNORE, Plan, collate, learned_tokens, seq2seq_rows


def test_the_order_is_a_pure_function_of_seed_and_epoch():
    plan = Plan((50, 30), (1.0, 1.0), seed=3, global_batch=8, batch_size=4)
    again = Plan((50, 30), (1.0, 1.0), seed=3, global_batch=8, batch_size=4)
    other = Plan((50, 30), (1.0, 1.0), seed=4, global_batch=8, batch_size=4)
    assert [plan.step_rows(s) for s in range(25)] == [again.step_rows(s) for s in range(25)]
    assert plan.step_rows(0) != other.step_rows(0)
    epoch = [i for s in range(plan.steps_per_epoch) for i in plan.step_rows(s)]
    assert len(epoch) == 80 == len(set(epoch))  # every row once per epoch
    second = [i for s in range(plan.steps_per_epoch, 2 * plan.steps_per_epoch) for i in plan.step_rows(s)]
    assert sorted(second) == sorted(epoch) and second != epoch  # the next epoch: same rows, a new order


def test_weights_repeat_or_subsample_a_source():
    plan = Plan((40, 40), (2.0, 0.5), seed=0, global_batch=10, batch_size=10)
    assert plan.epoch_rows == 100 and plan.steps_per_epoch == 10
    seen = Counter(i for s in range(10) for i in plan.step_rows(s))
    assert all(seen[i] == 2 for i in range(40))
    half = [i for i in range(40, 80) if seen[i]]
    assert len(half) == 20 and all(seen[i] == 1 for i in half)


@pytest.mark.parametrize("world", [2, 4])
def test_processes_split_a_step_into_the_micro_batches_of_one_process(world):
    plan_w = Plan((64,), (1.0,), seed=1, global_batch=2 * 2 * world, batch_size=2)
    for step in range(3):
        per_process = [plan_w.micro_batches(step, r, world) for r in range(world)]
        single = plan_w.micro_batches(step, 0, 1)
        assert len(single) == 2 * world and all(len(m) == 2 for p in per_process for m in p)
        assert sorted(sum(single, [])) == sorted(sum(sum(per_process, []), []))
        assert {tuple(m) for p in per_process for m in p} == {tuple(m) for m in single}


def test_collate_pads_right_and_masks_padding():
    rows = [{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    batch = collate(rows, pad_id=0, seq2seq=False, max_len=16)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert collate(rows, 0, False, max_len=2)["input_ids"].tolist() == [[5, 6], [8, 0]]
    assert learned_tokens(rows[0], seq2seq=False, max_len=16) == 2  # token 0 predicts nothing
    assert learned_tokens(rows[0], seq2seq=True, max_len=16) == 2


def test_seq2seq_rows_turn_each_reply_into_history_to_reply():
    ids = [1, 2, 3, 4, 5, 6, 7, 8]
    labels = [IGNORE, IGNORE, 3, 4, IGNORE, IGNORE, 7, 8]
    out = seq2seq_rows({"input_ids": [ids, [9, 9]], "labels": [labels, [9, 9]]})  # a raw-text row has no history
    assert out == {"input_ids": [[1, 2], [1, 2, 3, 4, 5, 6]], "labels": [[3, 4], [7, 8]]}
    batch = collate([{"input_ids": out["input_ids"][1], "labels": out["labels"][1]}], 0, seq2seq=True, max_len=3)
    assert batch["input_ids"].tolist() == [[4, 5, 6]]  # an encoder keeps the newest history


@pytest.fixture
def acc():
    """A real accelerator holding a tiny model and optimizer, as the loop's would."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 2)
    accelerator.prepare(model, torch.optim.AdamW(model.parameters()))
    yield accelerator
    AcceleratorState._reset_state(reset_partial_state=True)


def test_checkpoints_keep_the_last_n_and_the_best(acc, tmp_path):
    losses = {2: 3.0, 4: 1.0, 6: 2.0, 8: 2.5, 10: None}
    for step, loss in losses.items():
        checkpoint.save(acc, tmp_path, step, loss, keep_last=2, keep_best=True)
    assert [s for s, _ in checkpoint.complete(tmp_path)] == [4, 8, 10]
    assert checkpoint.best(tmp_path).name == "step-00000004"
    assert checkpoint.latest(tmp_path).name == "step-00000010"
    assert json.loads((checkpoint.latest(tmp_path) / "meta.json").read_text())["step"] == 10
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]
    checkpoint.save(acc, tmp_path, 12, None, keep_last=1, keep_best=False)
    assert [s for s, _ in checkpoint.complete(tmp_path)] == [12]


def test_half_written_and_half_deleted_checkpoints_are_ignored_then_cleaned(acc, tmp_path):
    checkpoint.save(acc, tmp_path, 2, None, keep_last=3, keep_best=False)
    root = tmp_path / "checkpoints"
    (root / ".tmp-step-00000004").mkdir()  # a kill during the write of step 4
    (root / ".tmp-step-00000004" / "optimizer.bin").write_bytes(b"partial")
    (root / ".trash-step-00000000-1").mkdir()  # a kill while deleting an old one
    (root / "step-00000006").mkdir()  # not ours to trust: no meta.json
    assert checkpoint.latest(tmp_path).name == "step-00000002"
    checkpoint.clean_leftovers(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["step-00000002", "step-00000006"]


@pytest.mark.parametrize("arch, attn", [("llama", "sdpa"), ("gpt2", "eager")])
def test_packed_rows_keep_attention_within_each_record(tokenizer, arch, attn):
    """Training passes packed rows' position ids without a mask (steps.causal_inputs): a record's logits in a
    packed, right-padded row are the logits it gets alone, so no record attends to another."""
    import sys
    from pathlib import Path

    from parley.train.steps import causal_inputs

    sys.path.insert(0, str(Path(__file__).parents[1]))
    import tiny_models

    model = getattr(tiny_models, f"tiny_{arch}")(tokenizer, attn_implementation=attn)
    first, second = [5, 6, 7, 8, 9], [10, 11, 12]
    rows = [{"input_ids": first + second, "labels": first + second, "position_ids": [0, 1, 2, 3, 4, 0, 1, 2]},
            {"input_ids": second, "labels": second, "position_ids": [0, 1, 2]}]
    batch = collate(rows, pad_id=0, seq2seq=False, max_len=16)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], use_cache=False, **causal_inputs(batch)).logits  # as training calls it
        alone = model(input_ids=torch.tensor([second])).logits
        unmasked = model(input_ids=batch["input_ids"][:1], position_ids=batch["position_ids"][:1],
                         attention_mask=batch["attention_mask"][:1]).logits
    torch.testing.assert_close(packed[0, 5:8], alone[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[1, :3], alone[0], atol=1e-5, rtol=1e-4)  # padding changes nothing either
    assert not torch.allclose(unmasked[0, 5:8], alone[0], atol=1e-3)  # with the mask, it would see the first record
