"""How often a model prefers the reply people preferred: `parley eval preference`.

    parley eval preference --model smollm2 --source feedback --out before.json
    parley eval preference --model runs/dpo/final --source feedback --out after.json
    parley eval compare before.json after.json

Each pair (a context, a chosen and a rejected reply, from any preference source of `parley data
prepare`: the store's feedback, TRL / HH-RLHF / UltraFeedback files) is scored by the summed
log-probability of each reply's tokens after the context, rendered with the model's chat template
(the same tokens DPO trains on, preference_tokenize.py). Reported:
    loglik_accuracy   share of pairs where log p(chosen) > log p(rejected): any model, comparable
                      before and after tuning
    loglik_margin     mean of log p(chosen) − log p(rejected), in nats
    reward_accuracy   by the implicit reward β (log p − log p_ref) for a DPO model (its reference:
                      the base with adapters disabled for a LoRA run, else the model its
                      preference.json names, or --reference); by log-likelihood for any other model
    reward_margin     mean chosen − rejected reward (or log-likelihood margin)
Ties count as not preferring the chosen reply. Unpaired judgements (a thumbs up or down alone) are
left out and counted.

Limits: local models only (scores need log-probabilities of given text); a pair longer than the
context window is cut as data preparation cuts it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from parley.errors import ConfigError, DataError



@dataclass(frozen=True)
class PreferenceEvalConfig:
    split: str = "all"  # all, or validation: only the records `parley data prepare` holds out
    val_ratio: float = 0.05  # the held-out share, as in `parley data prepare`
    limit: int = 0  # at most this many pairs (0 = all)
    batch: int = 8  # pairs scored per forward pass
    reference: str = ""  # the reference model of the implicit reward; "" = what the model's preference.json says
    beta: float = 0.0  # the implicit reward's β; 0 = the DPO run's (0.1 when unknown)

    def __post_init__(self) -> None:
        if self.split not in ("all", "validation"):
            raise ConfigError(f"--split must be all or validation, got {self.split!r}")
        if self.batch < 1 or self.limit < 0:
            raise ConfigError("--batch must be at least 1 and --limit 0 or more")


def read_pairs(specs: list[str], config: PreferenceEvalConfig) -> tuple[list, dict]:
    """The chosen/rejected pairs of the sources, and counts (unpaired, bad, held out of the split)."""
    from parley.data.prepare import in_validation
    from parley.data.records import Bad
    from parley.data.sources import parse

    pairs, counts = [], {"unpaired": 0, "bad": 0, "other_split": 0}
    for spec in specs:
        source = parse(spec)
        if source.kind != "preference":
            raise DataError(f"{spec}: not a preference source; use --source feedback, prefs:FILE, or a "
                            "prompt/chosen/rejected file")
        for item in source.read():
            if isinstance(item, Bad):
                counts["bad"] += 1
            elif not item.paired:
                counts["unpaired"] += 1
            elif config.split == "validation" and not in_validation(item, config.val_ratio):
                counts["other_split"] += 1
            else:
                pairs.append(item)
    if config.limit:
        pairs = pairs[: config.limit]
    if not pairs:
        raise DataError(f"no chosen/rejected pairs in {', '.join(specs)} (split={config.split}; "
                        f"{counts['unpaired']} unpaired, {counts['bad']} bad)")
    return pairs, counts


def reference_of(loaded, config: PreferenceEvalConfig) -> tuple[str, str | None, float]:
    """(how the reward is measured, the reference spec or None for adapters off, β)."""
    from parley.train.dpo import PREFERENCE_FILE

    saved = {}
    path = Path(loaded.path or "") / PREFERENCE_FILE if getattr(loaded, "path", None) else None
    if path is not None and path.is_file():
        saved = json.loads(path.read_text())
    beta = config.beta or saved.get("beta", 0.1)
    if config.reference:
        return "implicit_reward", config.reference, beta
    if saved.get("adapters_off"):
        return "implicit_reward", None, beta
    if saved.get("reference"):
        return "implicit_reward", saved["reference"], beta
    return "log_likelihood", None, beta


def score(model, rows: list[dict], pad_id: int, max_len: int, batch: int, adapters_off: bool = False):
    """(2, N) summed log-probs of [chosen, rejected] for each row; with `adapters_off`, of the base."""
    import torch
    from contextlib import nullcontext

    from parley.train import dpo

    device = next(model.parameters()).device
    out = []
    context = model.disable_adapter() if adapters_off else nullcontext()
    with torch.inference_mode(), context:
        for start in range(0, len(rows), batch):
            tensors = {k: v.to(device) for k, v in dpo.collate(rows[start : start + batch], pad_id, max_len).items()}
            logits = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"]).logits
            logps, _ = dpo.sequence_logps(logits, tensors["labels"])
            out.append(torch.stack(logps.chunk(2)))
    return torch.cat(out, dim=1)


def evaluate(loaded, model: str, sources: list[str], config: PreferenceEvalConfig, out: str | Path) -> tuple[dict, Path, Path]:
    """Score every pair with the model (and its reference) and write the results (JSON + Markdown)."""
    from parley import models
    from parley.data.preference_tokenize import PreferenceEncoder
    from parley.eval.report import write_results

    pairs, counts = read_pairs(sources, config)
    started = time.monotonic()
    encoder = PreferenceEncoder(loaded.tokenizer, loaded.template, loaded.context_window)
    rows = encoder.encode_batch(pairs)
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else loaded.tokenizer.eos_token_id
    policy = score(loaded.model, rows, pad, loaded.context_window, config.batch)
    measure, reference, beta = reference_of(loaded, config)
    metrics = _margins("loglik", policy)
    if measure == "implicit_reward":
        if reference is None:
            base = score(loaded.model, rows, pad, loaded.context_window, config.batch, adapters_off=True)
        else:
            ref = models.load(reference, device=str(next(loaded.model.parameters()).device.type))
            base = score(ref.model, rows, pad, loaded.context_window, config.batch)
        metrics |= _margins("reward", beta * (policy - base))
    else:
        metrics |= {"reward_accuracy": metrics["loglik_accuracy"], "reward_margin": metrics["loglik_margin"]}
    results = {
        "kind": "preference", "model": model, "sources": sources,
        "settings": asdict(config) | {"measure": measure, "beta": beta if measure == "implicit_reward" else None,
                                      "reference": reference if reference else ("adapters disabled" if measure == "implicit_reward" else None)},
        "metrics": metrics,
        "details": {"pairs": len(pairs), **counts, "truncated": encoder.counts["truncated"],
                    "seconds": round(time.monotonic() - started, 1)},
        "pairs": [{"where": p.where, "chosen": p.chosen[:200], "rejected": p.rejected[:200],
                      "margin": round(float(policy[0, i] - policy[1, i]), 3)} for i, p in enumerate(pairs[:5])],
    }
    return (results, *write_results(results, out))


def _margins(name: str, scores) -> dict:
    diff = scores[0] - scores[1]  # (N,) chosen minus rejected
    return {f"{name}_accuracy": float((diff > 0).float().mean()), f"{name}_margin": float(diff.mean())}
