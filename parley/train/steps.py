"""One optimizer step and one evaluation of `parley train`, on this process's share of the data
(loop.py drives them; see its docstring for how the loss is scaled across processes and accumulation).

    steps = Steps(accelerator, model, optimizer, scheduler, data, plan, RowStats(...), config, ...)
    loss, grad_norm, tokens, extras = steps.step(step)      # raises TrainingDiverged, OutOfMemory
    val_loss = steps.evaluate()                             # None without validation data

The loss is cross-entropy over the learned tokens (fp32 logits), or a preference objective's (dpo.py).
A NaN/inf loss or gradient norm stops before the update (TrainingDiverged), and running out of memory
becomes one line of advice (OutOfMemory): both name the step.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

from parley.errors import ParleyError
from parley.train import dpo
from parley.train.batches import IGNORE, collate, learned_tokens
from parley.train.config import TrainConfig


class TrainingDiverged(ParleyError):
    """The loss or the gradient became NaN or infinite."""


class OutOfMemory(ParleyError):
    """A step did not fit in memory; the message says what to change."""


class RowStats:
    """Length and learned-token count of every training row, computed once (a column scan)."""

    def __init__(self, train, seq2seq: bool, max_len: int, method: str = "sft"):
        def stats(batch):
            if method == "dpo":  # two sequences a row; the unit of loss is the pair
                pairs = zip(batch["prompt_ids"], batch["chosen_ids"], batch["rejected_ids"])
                return {"n": [min(len(p) + len(c), max_len) + min(len(p) + len(r), max_len) for p, c, r in pairs],
                        "learned": [1] * len(batch["prompt_ids"])}
            return {
                "n": [min(len(x), max_len) for x in batch["input_ids"]],
                "learned": [learned_tokens({"labels": y}, seq2seq, max_len) for y in batch["labels"]],
            }

        table = train.map(stats, batched=True, remove_columns=train.column_names, keep_in_memory=True)
        self.length = table["n"]
        self.learned = table["learned"]


class Steps:
    """One optimizer step and one evaluation, on this process's share of the data."""

    def __init__(self, accelerator, model, optimizer, scheduler, data, plan, rows, config, seq2seq, max_len, pad_id,
                 decoder_inputs, objective=None):
        self.accelerator, self.model, self.optimizer, self.scheduler = accelerator, model, optimizer, scheduler
        self.data, self.plan, self.rows, self.config = data, plan, rows, config
        self.seq2seq, self.max_len, self.pad_id, self.decoder_inputs = seq2seq, max_len, pad_id, decoder_inputs
        self.objective = objective  # dpo.Objective, or None: cross-entropy on the learned tokens
        self.stat_names = dpo.STATS if objective is not None else ()
        self.eval_stats: dict = {}  # the last evaluation's means of stat_names

    def step(self, step: int) -> tuple[float, float, int, dict]:
        """Train step `step` (0-based); returns (mean loss per learned token, or per pair for DPO,
        gradient norm, tokens, the objective's other means: DPO's rewards)."""
        import torch

        acc, world = self.accelerator, self.accelerator.num_processes
        rows = self.plan.step_rows(step)
        learned = max(1, sum(self.rows.learned[i] for i in rows))
        micro = self.plan.micro_batches(step, acc.process_index, world)
        self.model.train()
        total = torch.zeros((), device=acc.device)
        stats = torch.zeros(len(self.stat_names), device=acc.device)
        try:
            for k, indices in enumerate(micro):
                batch = self._batch(indices)
                with nullcontext() if k == len(micro) - 1 else acc.no_sync(self.model):
                    loss_sum, extra = self._loss_sum(batch)
                    acc.backward(loss_sum * (world / learned))
                total += loss_sum.detach()
                stats += extra
            loss = float(acc.reduce(total, "sum")) / learned
            extras = {name: float(v) / learned for name, v in zip(self.stat_names, acc.reduce(stats, "sum"))} \
                if self.stat_names else {}
            clip = self.config.optim.grad_clip or math.inf
            grad_norm = float(acc.clip_grad_norm_(self.model.parameters(), clip))
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if _is_oom(e):
                raise OutOfMemory(_oom_advice(self.config, step + 1, self.max_len)) from e
            raise
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {grad_norm}"
            raise TrainingDiverged(
                f"training stopped at step {step + 1}: the {what}. The last good checkpoint is kept; lower "
                f"optim.lr, raise optim.warmup_steps, keep optim.grad_clip on, or use precision=fp32, then "
                f"continue with `parley train --resume {self.config.out_dir}`"
            )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm, sum(self.rows.length[i] for i in rows), extras

    def evaluate(self) -> float | None:
        """Mean validation loss per learned token over every process, or None without validation data."""
        import torch

        val = self.data.val
        if val is None:
            return None
        acc, world, size = self.accelerator, self.accelerator.num_processes, self.config.batch_size
        n = min(len(val), self.config.data.val_rows or len(val))
        chosen = [i * len(val) // n for i in range(n)]  # spread over every source's validation rows
        mine = chosen[acc.process_index :: world]
        # Every process runs the same number of forwards (FSDP needs it); a short one repeats row 0 at weight 0.
        count = math.ceil(math.ceil(n / world) / size)
        totals = torch.zeros(2 + len(self.stat_names), device=acc.device)  # (loss sum, learned units, stats)
        self.model.eval()
        with torch.no_grad():
            for b in range(count):
                indices = mine[b * size : (b + 1) * size]
                weight = 1.0 if indices else 0.0
                batch = self._collate([val[i] for i in (indices or [0])])
                loss_sum, extra = self._loss_sum(batch)
                totals[0] += weight * loss_sum
                totals[1] += weight * (batch["input_ids"].shape[0] // 2 if self.objective is not None
                                       else _count_learned(batch["labels"], self.seq2seq))
                totals[2:] += weight * extra
        self.model.train()
        totals = acc.reduce(totals, "sum")
        if totals[1] <= 0:
            return None
        self.eval_stats = {name: float(v / totals[1]) for name, v in zip(self.stat_names, totals[2:])}
        return float(totals[0] / totals[1])

    def _batch(self, indices: list[int]) -> dict:
        columns = self.data.train[indices]
        rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
        return self._collate(rows)

    def _collate(self, rows: list[dict]) -> dict:
        if self.objective is not None:
            batch = dpo.collate(rows, self.pad_id, self.max_len)
        else:
            batch = collate(rows, self.pad_id, self.seq2seq, self.max_len)
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    def _loss_sum(self, batch: dict):
        """(summed loss of `batch`, summed stats): the objective's, or the cross-entropy over the learned
        tokens (fp32 logits) with no stats."""
        import torch
        import torch.nn.functional as F

        if self.objective is not None:
            return self.objective.loss_sum(self.model, batch)
        none = torch.zeros(0, device=self.accelerator.device)

        if self.seq2seq:
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             decoder_input_ids=self.decoder_inputs(labels=batch["labels"]), use_cache=False)
            logits, targets = out.logits, batch["labels"]  # (B, T_reply, V), (B, T_reply)
        else:
            out = self.model(input_ids=batch["input_ids"], use_cache=False, **causal_inputs(batch))
            # Token t predicts t+1: shift the labels (padding the end) rather than copy the (B, T, V) logits.
            logits, targets = out.logits, F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum"), none


def causal_inputs(batch: dict) -> dict:
    """The attention inputs of a causal batch. Packed rows pass their position ids and no mask: from
    positions that restart at 0, transformers builds a block-diagonal causal mask (masking_utils'
    packed-sequence path, for sdpa, eager and flash attention alike), so records packed into one row
    never attend to each other. Right padding (position 0, label -100) forms one-token blocks of its own."""
    if "position_ids" in batch:
        return {"position_ids": batch["position_ids"]}
    return {"attention_mask": batch["attention_mask"]}


def _count_learned(labels, seq2seq: bool):
    return (labels != IGNORE).sum() if seq2seq else (labels[:, 1:] != IGNORE).sum()


def _is_oom(error: Exception) -> bool:
    import torch

    text = str(error)
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def _oom_advice(config: TrainConfig, step: int, max_len: int) -> str:
    advice = [f"lower batch_size (now {config.batch_size}) and raise grad_accum to keep the global batch"]
    if not config.gradient_checkpointing:
        advice.append("set gradient_checkpointing=true")
    if config.tuning == "full":
        advice.append("train LoRA adapters instead of every weight (lora.r=16)")
    import torch

    if config.precision == "fp32" and config.device != "cpu" and torch.cuda.is_available():
        advice.append("use precision=bf16")
    advice.append(f"lower data.max_len (now {config.data.max_len or max_len} tokens)")
    return f"out of memory at step {step}: " + "; ".join(advice)
