"""Preference tuning: the objective `parley train --set method=dpo` minimizes, on prepared preference rows
(`parley data prepare --source feedback|prefs:FILE`: prompt_ids, chosen_ids, rejected_ids).

For a pair, with log-probabilities summed over each reply's tokens given the prompt,
    z = (log π(chosen) − log π_ref(chosen)) − (log π(rejected) − log π_ref(rejected))
the loss is one of (TRL's names and formulas, checked against TRL in tests/train/test_dpo.py):
    sigmoid   −log σ(β z)                      DPO (Rafailov et al., 2023)
    hinge     max(0, 1 − β z)                  SLiC (Zhao et al., 2023)
    ipo       (z̄ − 1/(2β))², z̄ with each log-ratio averaged per reply token   IPO (Azar et al., 2023)
The implicit reward of a reply is β (log π − log π_ref); the run logs the mean chosen and rejected
rewards, the reward accuracy (share of pairs whose chosen reward is higher) and the mean margin.

Reference: with LoRA it is the same network with its adapters disabled (peft's `disable_adapter()`), so no
second copy is held; with full fine-tuning (or `dpo.reference` naming another model) it is a frozen copy
loaded once and never updated. Dropout is switched off in the policy (TRL's default, `disable_dropout`), so
the policy and its reference see the same network at step 0, where every reward is 0 and the loss log 2.

Rows are collated as [chosen rows; rejected rows] (2B sequences) and run in one forward pass. A row's
unit of loss is the pair: the loop divides the summed loss by the pairs of the global batch. Unpaired
rows (a thumbs up or down alone) are left out of DPO training and counted.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from parley.train.batches import IGNORE

STATS = ("rewards_chosen", "rewards_rejected", "reward_accuracy", "reward_margin")  # means per pair
PREFERENCE_FILE = "preference.json"  # in a DPO run's final dir: beta and the reference, for `parley eval preference`


def collate(rows: list[dict], pad_id: int, max_len: int) -> dict[str, torch.Tensor]:
    """(2B, T) input_ids, attention_mask and labels (IGNORE on prompts and padding): chosen rows first."""
    ids, labels = [], []
    for side in ("chosen_ids", "rejected_ids"):
        for r in rows:
            prompt, reply = list(r["prompt_ids"]), list(r[side])
            ids.append((prompt + reply)[:max_len])
            labels.append(([IGNORE] * len(prompt) + reply)[:max_len])
    width = max(len(x) for x in ids)
    pad = lambda seqs, value: torch.tensor([s + [value] * (width - len(s)) for s in seqs], dtype=torch.long)  # noqa: E731
    return {"input_ids": pad(ids, pad_id), "attention_mask": pad([[1] * len(x) for x in ids], 0),
            "labels": pad(labels, IGNORE)}


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log p over each row's labelled tokens, their count): both (N,). Token t predicts t+1."""
    targets = labels[:, 1:]  # (N, T-1)
    per_token = -F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                                 ignore_index=IGNORE, reduction="none").view_as(targets)
    mask = targets != IGNORE
    return (per_token * mask).sum(-1), mask.sum(-1)


def preference_loss(policy: torch.Tensor, reference: torch.Tensor, lengths: torch.Tensor, beta: float,
                    kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses (B,) and the chosen and rejected rewards (B,), from (2B,) summed log-probs of
    [chosen; rejected] under the policy and the reference, and the replies' token counts."""
    ratios = policy - reference  # (2B,)
    chosen, rejected = ratios.chunk(2)
    if kind == "sigmoid":
        losses = -F.logsigmoid(beta * (chosen - rejected))
    elif kind == "hinge":
        losses = torch.relu(1 - beta * (chosen - rejected))
    elif kind == "ipo":
        n_chosen, n_rejected = lengths.clamp(min=1).chunk(2)
        losses = (chosen / n_chosen - rejected / n_rejected - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown preference loss {kind!r}")  # config.py's Literal rules this out
    return losses, beta * chosen.detach(), beta * rejected.detach()


class Objective:
    """The DPO loss of a micro-batch, against the reference chosen when the run starts."""

    def __init__(self, config, accelerator, reference=None):
        self.config = config  # DpoConfig
        self.accelerator = accelerator
        self.reference = reference  # a frozen model, or None: the policy with its adapters disabled

    def loss_sum(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed per-pair loss, summed STATS) over the pairs of `batch`."""
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
        policy, lengths = sequence_logps(model(**inputs).logits, batch["labels"])
        with torch.no_grad():
            if self.reference is None:
                network = self.accelerator.unwrap_model(model)
                with network.disable_adapter():
                    reference, _ = sequence_logps(network(**inputs).logits, batch["labels"])
            else:
                with self.accelerator.autocast() if self.accelerator.mixed_precision != "no" else nullcontext():
                    reference, _ = sequence_logps(self.reference(**inputs).logits, batch["labels"])
        losses, chosen, rejected = preference_loss(policy, reference, lengths, self.config.beta, self.config.loss)
        stats = torch.stack([chosen.sum(), rejected.sum(), (chosen > rejected).float().sum(), (chosen - rejected).sum()])
        return losses.sum(), stats


def disable_dropout(model) -> None:
    """Every dropout probability to 0 (TRL's `disable_dropout`): the policy and its reference must agree."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def frozen_reference(spec: str, device):
    """A copy of `spec` for the reference: eval mode, no gradients, on `device`."""
    from parley import models

    loaded = models.load(spec, device="cpu", dtype="float32")
    model = loaded.model.to(device).eval()
    model.requires_grad_(False)
    return model
