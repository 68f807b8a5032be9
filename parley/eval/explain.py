"""Faithfulness of attribution, measured: does deleting the prompt tokens a method ranks highest hurt
the reply more than deleting as many at random? The ERASER deletion test (DeYoung et al., 2020).

    parley eval explain --cases humaneval --cases dialogues --limit 10 --method gxi,occlusion
    parley eval explain --cases my.jsonl       # {"messages": [...]} per line; last assistant turn = the reply

For each case the model's own greedy reply is generated (a JSONL record's final assistant turn is used
as it is), attribution scores the prompt tokens for the whole reply, and for each k in `bins` (a share
of the prompt's content tokens: the messages' own text, never the template's markers):
    comprehensiveness(k) = f(prompt) - f(prompt without the top k)      higher: the top tokens mattered
    sufficiency(k)       = f(prompt) - f(only the top k of the content)  lower: they were enough
where f is the reply's mean log-prob per token and "top" means highest score (most in favour of the
reply). Tokens are deleted from the token sequence (ERASER's removal), the template left intact.
AOPC is the mean over the bins. The same is done for `random_draws` random choices of k tokens per case
(`random`), and every method is compared with random case by case: mean difference with a 95% bootstrap
confidence interval over cases (`*_vs_random`); an interval that includes 0 means "not shown to beat
random", and the summary says so.

Cases: `humaneval` (HumanEval prompts, asked the way `parley eval code` asks), `dialogues` (the held-out
split of the built-in conversations), or a JSONL file. Limits: one forward per (method, bin, measure);
integrated gradients is opt-in (`--method ig`) and costs `steps` passes per case.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from parley.errors import ConfigError


@dataclass(frozen=True)
class ExplainEvalConfig:
    cases: tuple[str, ...] = ("humaneval", "dialogues")  # humaneval, dialogues, or JSONL files
    limit: int = 8  # at most this many cases from each set (0 = all)
    methods: tuple[str, ...] = ("gradient_x_input", "occlusion")  # attribution methods compared with random
    steps: int = 32  # integrated gradients' interpolation points, when asked for
    bins: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2, 0.5)  # shares of content tokens removed / kept (ERASER's)
    random_draws: int = 3  # random choices per case and bin
    max_new_tokens: int = 64  # generated reply length limit
    bootstrap: int = 2000  # resamples for the confidence intervals
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.bins or not all(0 < b < 1 for b in self.bins):
            raise ConfigError(f"--bins must be shares between 0 and 1, like 0.1,0.2, got {self.bins}")
        if self.limit < 0 or self.random_draws < 1:
            raise ConfigError("--limit must be 0 or more and --random-draws at least 1")


def load_cases(config: ExplainEvalConfig) -> list[tuple[str, list[dict], str | None]]:
    """(where, messages, reply or None) for every case set in `config.cases`."""
    found = []
    for name in config.cases:
        if name == "humaneval":
            from parley.eval.completions import CHAT_REQUEST
            from parley.eval.problems import load_problems

            problems = list(load_problems().values())[: config.limit or None]
            found += [(p.task_id, [{"role": "user", "content": CHAT_REQUEST.format(prompt=p.prompt)}], None)
                      for p in problems]
        elif name == "dialogues":
            from parley.eval.dialogue import DialogueConfig, conversations

            for history, _, where in conversations(["chatterbot"], DialogueConfig(limit=config.limit)):
                found.append((where, history, None))
        else:
            from parley.explain.cases import from_jsonl

            path = Path(name)
            if not path.is_file():
                raise ConfigError(f"--cases {name}: not humaneval, dialogues or a JSONL file")
            lines = sum(1 for line in path.open(encoding="utf-8") if line.strip())
            for n in range(1, (min(lines, config.limit) if config.limit else lines) + 1):
                found.append((f"{path}:{n}", *from_jsonl(path, n)))
    if not found:
        raise ConfigError("no cases to explain: give --cases humaneval, dialogues or a JSONL file")
    return found


def mean_logprob(loaded, prompt_ids: list[int], reply_ids: list[int]) -> float:
    """The reply's mean log-prob per token after `prompt_ids` (one forward)."""
    import torch

    with torch.inference_mode():
        logits = loaded.model(input_ids=torch.tensor([prompt_ids + reply_ids], device=loaded.device)).logits[0]
        logits = logits[len(prompt_ids) - 1: -1].float()
        target = torch.tensor(reply_ids, device=loaded.device)[:, None]
        return float(torch.log_softmax(logits, -1).gather(-1, target).mean())


def deletion_curves(loaded, layout, order: list[int], bins: tuple[float, ...], full: float) -> tuple[list, list]:
    """(comprehensiveness, sufficiency) per bin for deleting / keeping the first k of `order` (content tokens)."""
    content = [j for j, inside in enumerate(layout.in_content) if inside]
    comp, suff = [], []
    for share in bins:
        k = max(1, round(share * len(content)))
        top = set(order[:k])
        removed = [t for j, t in enumerate(layout.prompt_ids) if j not in top]
        kept = [t for j, t in enumerate(layout.prompt_ids) if not layout.in_content[j] or j in top]
        comp.append(full - mean_logprob(loaded, removed, layout.reply_ids))
        suff.append(full - mean_logprob(loaded, kept, layout.reply_ids))
    return comp, suff


def evaluate_case(loaded, layout, config: ExplainEvalConfig, rng: random.Random) -> dict:
    """AOPC of comprehensiveness and sufficiency per method and for random, for one case."""
    from parley.explain.attribution import explain
    from parley.explain.config import ExplainConfig

    content = [j for j, inside in enumerate(layout.in_content) if inside]
    if len(content) < 2:
        raise ConfigError("a case needs at least two content tokens in its prompt")
    full = mean_logprob(loaded, layout.prompt_ids, layout.reply_ids)
    explanation = explain(loaded, layout, ExplainConfig(methods=config.methods, steps=config.steps, rows=False,
                                                        top=0))
    result = {}
    for method, scores in explanation.scores.items():
        order = sorted(content, key=lambda j: -scores[j])  # stable: ties (occlusion) keep prompt order
        comp, suff = deletion_curves(loaded, layout, order, config.bins, full)
        result[method] = {"comprehensiveness": comp, "sufficiency": suff}
    draws = [deletion_curves(loaded, layout, rng.sample(content, len(content)), config.bins, full)
             for _ in range(config.random_draws)]
    result["random"] = {"comprehensiveness": _mean_curve([d[0] for d in draws]),
                        "sufficiency": _mean_curve([d[1] for d in draws])}
    return {"full_logprob": full, "content_tokens": len(content), "curves": result}


def _mean_curve(curves: list[list[float]]) -> list[float]:
    return [sum(values) / len(values) for values in zip(*curves)]


def bootstrap_ci(values: list[float], resamples: int, seed: int) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its 95% percentile bootstrap interval."""
    import numpy as np

    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    return float(data.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarize(cases: list[dict], config: ExplainEvalConfig) -> tuple[dict, dict]:
    """(metrics, details): AOPC per method and each method's paired difference from random (numbers, so
    `parley eval compare` lines them up); details hold their 95% intervals and the verdicts."""
    metrics, intervals, verdicts = {}, {}, []
    aopc = {name: {measure: [sum(c["curves"][name][measure]) / len(config.bins) for c in cases]
                   for measure in ("comprehensiveness", "sufficiency")}
            for name in (*config.methods, "random")}
    for name, measures in aopc.items():
        for measure, values in measures.items():
            mean, low, high = bootstrap_ci(values, config.bootstrap, config.seed)
            metrics[f"{name}.{measure}_aopc"] = mean
            intervals[f"{name}.{measure}_aopc"] = [low, high]
    for name in config.methods:
        for measure, better in (("comprehensiveness", 1), ("sufficiency", -1)):
            diffs = [a - b for a, b in zip(aopc[name][measure], aopc["random"][measure])]
            mean, low, high = bootstrap_ci(diffs, config.bootstrap, config.seed)
            metrics[f"{name}.{measure}_vs_random"] = mean
            intervals[f"{name}.{measure}_vs_random"] = [low, high]
            beats = low > 0 if better > 0 else high < 0
            worse = high < 0 if better > 0 else low > 0
            verdict = "beats random" if beats else "is worse than random" if worse else "does not beat random"
            verdicts.append(f"{name} {verdict} on {measure} ({mean:+.3f} nats/token, 95% CI {low:+.3f}..{high:+.3f})")
    return metrics, {"ci95": intervals, "verdicts": verdicts}


def evaluate(loaded, model: str, config: ExplainEvalConfig, out: str | Path) -> tuple[dict, Path, Path]:
    """Run the deletion test over every case and write the results (JSON + Markdown)."""
    from parley.eval.report import progress, write_results
    from parley.explain.cases import generate
    from parley.explain.layout import lay_out

    started = time.monotonic()
    rng = random.Random(config.seed)
    cases, skipped = [], []
    found = load_cases(config)
    with progress("cases", len(found)) as advance:
        for where, messages, reply in found:
            try:
                reply = reply if reply is not None else generate(loaded, messages, config.max_new_tokens)
                layout = lay_out(loaded, messages, reply)
                cases.append({"where": where, **evaluate_case(loaded, layout, config, rng)})
            except ConfigError as e:  # an empty reply, a prompt with no content: counted, not fatal
                skipped.append(f"{where}: {e}")
            advance(1)
    if not cases:
        raise ConfigError(f"no case could be evaluated: {skipped[0] if skipped else 'none given'}")
    metrics, details = summarize(cases, config)
    details.update(cases=len(cases), skipped=skipped, seconds=round(time.monotonic() - started, 1))
    results = {"kind": "explain", "model": model, "settings": asdict(config), "metrics": metrics,
               "details": details, "cases": cases}
    return (results, *write_results(results, out))
