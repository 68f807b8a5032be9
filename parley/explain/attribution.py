"""Which prompt tokens, lines and messages drove a span of the reply: attribution over the model's own
forward pass, on the same template and weights that wrote the reply.

    explanation = explain(engine.weights(), layout, ExplainConfig(methods=("gradient_x_input", "occlusion")))
    explanation.scores["gradient_x_input"]      # one score per prompt token, for the span's log-prob
    explanation.matrix["occlusion"]             # one row per reply token of the span, one column per prompt token
    explanation.by_message("gradient_x_input")  # [(label, score)] summed over each message's tokens
    contrast(loaded, layout, span, "other text")  # why the span and not that: log p(X) - log p(Y)

The target is the log-probability of reply tokens [first, end) (default: the whole reply) given
everything before them. Methods:
  gradient_x_input      d target / d e_j · e_j for each prompt token's input embedding e_j: one
                        forward and one backward for the span; one more backward per row of the matrix.
  integrated_gradients  captum's IntegratedGradients on the prompt's embeddings from a baseline of
                        the vocabulary's mean embedding (the reply's own embeddings stay as they are), Gauss-Legendre with
                        `steps` points: the scores sum to target(x) - target(baseline) (completeness);
                        opt-in, `steps` forwards and backwards per target (rows: per row).
  occlusion             leave one message out: re-render the conversation without it (the only message:
                        emptied) and measure the drop in the target's log-prob. The keys and values of the prefix before the
                        first changed token are reused from the full forward (DynamicCache.crop), so
                        only the rest is recomputed. Scores are per message; a token's entry in the
                        matrix is its message's score shared out evenly over the message's tokens.
  contrast              gradient x input of log p(X) - log p(Y): the span X against an alternative Y
                        the user picks, after the same context.

No hooks: the inputs go in as `inputs_embeds`, so nothing is attached to the model's modules, which a
serving driver may be decoding with on another thread at the same moment (grad mode is per thread).
Gradients are taken with `torch.autograd.grad` on the embeddings only; the weights' `.grad` stay
untouched. The numbers are in the model's dtype: a bf16 engine gives bf16-noisy gradients (the
`parley explain` verb loads fp32 on CPU).

Limits: decoder-only models; one conversation at a time; IG rows cost rows x steps passes.
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass, field

import torch

from parley.errors import ConfigError, ContextError
from parley.explain.config import ExplainConfig
from parley.explain.layout import Layout
from parley.templates import encode_chat

@dataclass
class ReplyToken:
    """One reply token with how sure the model was of it and what it nearly said."""

    text: str
    logprob: float
    entropy: float  # of the model's distribution at this position, in nats
    top: list[tuple[str, float]]  # the likeliest tokens here (text, logprob), best first


@dataclass
class Explanation:
    layout: Layout
    span: tuple[int, int]
    reply_tokens: list[ReplyToken]
    target_logprob: float  # log p(span | everything before it)
    scores: dict[str, list[float]] = field(default_factory=dict)  # method -> one score per prompt token
    matrix: dict[str, list[list[float]]] = field(default_factory=dict)  # method -> rows (span tokens) x prompt
    message_scores: dict[str, list[float]] = field(default_factory=dict)  # method -> per message label
    completeness: dict[str, float] = field(default_factory=dict)  # IG: target(x) - target(baseline)

    def by_message(self, method: str) -> list[tuple[str, float]]:
        return list(zip(self.layout.message_labels, self.message_scores[method]))

    def by_line(self, method: str) -> list[tuple[str, float]]:
        totals = [0.0] * len(self.layout.lines)
        for line, score in zip(self.layout.token_line, self.scores[method]):
            totals[line] += score
        return list(zip(self.layout.lines, totals))


def explain(loaded, layout: Layout, config: ExplainConfig | None = None) -> Explanation:
    """Every method in `config` for `layout`'s span: see the module docstring."""
    config = config or ExplainConfig()
    _check_decoder(loaded)
    first, end = config.span or (0, len(layout.reply_ids))
    if not 0 <= first < end <= len(layout.reply_ids):
        raise ConfigError(f"the span {first}..{end} is not within the reply's {len(layout.reply_ids)} tokens")
    base, cache = _base(loaded, layout)
    out = Explanation(layout, (first, end), confidence(loaded, base, layout.reply_ids, config.top),
                      float(base[first:end].gather(-1, _ids(loaded, layout.reply_ids[first:end])[:, None]).sum()))
    for method in config.methods:
        if method == "gradient_x_input":
            vector, rows = gradient_x_input(loaded, layout, (first, end), config.rows)
        elif method == "integrated_gradients":
            vector, rows, out.completeness[method] = integrated_gradients(
                loaded, layout, (first, end), config.steps, config.rows, config.ig_batch)
        else:
            vector, rows = occlusion(loaded, layout, (first, end), base, cache)
        out.scores[method] = vector
        if config.rows:
            out.matrix[method] = rows
        totals = [0.0] * len(layout.message_labels)
        for group, score in zip(layout.token_message, vector):
            totals[group] += score
        out.message_scores[method] = totals
    return out


def confidence(loaded, logprobs: torch.Tensor, reply_ids: list[int], top: int) -> list[ReplyToken]:
    """Each reply token's logprob, the entropy there and the `top` alternatives, from (R, V) logprobs."""
    decode = loaded.tokenizer.decode
    entropy = -(logprobs.exp() * logprobs).nan_to_num().sum(-1)
    values, best = torch.topk(logprobs, top) if top else (torch.empty(len(reply_ids), 0),) * 2
    return [ReplyToken(decode([token]), float(logprobs[t, token]), float(entropy[t]),
                       [(decode([i]), float(v)) for v, i in zip(values[t].tolist(), best[t].tolist())])
            for t, token in enumerate(reply_ids)]


def gradient_x_input(loaded, layout: Layout, span: tuple[int, int], rows: bool = False):
    """(scores per prompt token, rows: one per span token or []) for the span's log-prob."""
    prompt = len(layout.prompt_ids)
    embeds = _embed(loaded, layout.ids).requires_grad_()  # (T, C)
    with torch.enable_grad():
        logprobs = _reply_logprobs(loaded, embeds[None], prompt, layout.reply_ids)[0]  # (R,)
        first, end = span
        (grad,) = torch.autograd.grad(logprobs[first:end].sum(), embeds, retain_graph=rows)
        vector = _dot(grad, embeds, prompt)
        matrix = []
        for t in range(first, end) if rows else ():
            (grad,) = torch.autograd.grad(logprobs[t], embeds, retain_graph=t < end - 1)
            matrix.append(_dot(grad, embeds, prompt))
    return vector, matrix


def integrated_gradients(loaded, layout: Layout, span: tuple[int, int], steps: int, rows: bool = False,
                         batch: int = 16):
    """(scores, rows, target(x) - target(baseline)) by captum's IntegratedGradients: see the docstring."""
    from captum.attr import IntegratedGradients

    prompt = len(layout.prompt_ids)
    embeds = _embed(loaded, layout.ids)
    first, end = span

    def forward(prompt_embeds: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:  # (B, P, C), (B, R, C) -> (B, n)
        logprobs = _reply_logprobs(loaded, torch.cat([prompt_embeds, rest], dim=1), prompt, layout.reply_ids)
        return logprobs[:, first:end]

    def total(prompt_embeds, rest):
        return forward(prompt_embeds, rest).sum(-1)

    inputs, rest = embeds[None, :prompt], embeds[None, prompt:]
    baseline = _baseline(loaded, prompt)
    with torch.enable_grad():
        attributions, delta = IntegratedGradients(total).attribute(
            inputs, baselines=baseline, additional_forward_args=(rest,), n_steps=steps, internal_batch_size=batch,
            return_convergence_delta=True)
        vector = attributions[0].sum(-1).tolist()
        matrix = []
        for t in range(end - first) if rows else ():
            row = IntegratedGradients(forward).attribute(inputs, baselines=baseline, target=t,
                                                          additional_forward_args=(rest,),
                                                          n_steps=steps, internal_batch_size=batch)
            matrix.append(row[0].sum(-1).tolist())
    change = sum(vector) - float(delta[0])  # captum: delta = sum(attributions) - (f(x) - f(baseline))
    return vector, matrix, change


@torch.inference_mode()
def occlusion(loaded, layout: Layout, span: tuple[int, int], base: torch.Tensor | None = None, cache=None):
    """(scores per prompt token, rows) from leaving each message out: see the module docstring."""
    if base is None:
        base, cache = _base(loaded, layout)
    reply = layout.reply_ids
    full = layout.ids
    target = _ids(loaded, reply)[:, None]
    kept = base.gather(-1, target)[:, 0]  # (R,) the reply's logprobs with every message in
    first, end = span
    prompt = len(layout.prompt_ids)
    rows = [[0.0] * prompt for _ in range(first, end)]
    for m in range(len(layout.messages)):
        rest = layout.messages[:m] + layout.messages[m + 1:]
        if not rest:  # a template cannot render no message at all: the only message is left empty instead
            rest = [{**layout.messages[m], "content": ""}]
        ids = encode_chat(loaded.tokenizer, loaded.template, rest, add_generation_prompt=True) + reply
        shared = min(_common_prefix(ids, full), len(ids) - len(reply) - 1)
        past = None
        if shared > 0:
            past = copy.deepcopy(cache)
            past.crop(shared - past.get_seq_length())  # a negative count: the tokens to drop from the end
        out = loaded.model(input_ids=torch.tensor([ids[shared:]], device=loaded.device), cache=past,
                           use_cache=past is not None)
        logits = out.logits[0, len(ids) - len(reply) - 1 - shared: -1].float()  # (R, V)
        dropped = kept - torch.log_softmax(logits, dim=-1).gather(-1, target)[:, 0]
        tokens = [j for j, g in enumerate(layout.token_message) if g == m]
        for row, t in zip(rows, range(first, end)):
            for j in tokens:
                row[j] = float(dropped[t]) / len(tokens)
    vector = [sum(column) for column in zip(*rows)] if rows else [0.0] * prompt
    return vector, rows


def contrast(loaded, layout: Layout, span: tuple[int, int] | None, alternative: str) -> tuple[list[float], float, float]:
    """(scores per prompt token, log p(X), log p(Y)) for log p(X) - log p(Y), X the span of the reply and
    Y `alternative`, both after the prompt and the reply before the span (gradient x input)."""
    _check_decoder(loaded)
    first, end = span or (0, len(layout.reply_ids))
    other = loaded.tokenizer(alternative, add_special_tokens=False)["input_ids"]
    if not other:
        raise ConfigError("the alternative is empty: give the text the model might have said instead")
    total = len(layout.prompt_ids) + first + len(other)
    if total > loaded.context_window:
        raise ContextError(f"the alternative is {len(other)} tokens: with the prompt and the reply before the span "
                           f"that is {total}, over the model's context window of {loaded.context_window}: shorten it")
    prompt = len(layout.prompt_ids)
    context = layout.reply_ids[:first]
    prompt_embeds = _embed(loaded, layout.prompt_ids).requires_grad_()
    with torch.enable_grad():
        logp = []
        for target in (layout.reply_ids[first:end], other):
            rest = _embed(loaded, context + target)
            logprobs = _reply_logprobs(loaded, torch.cat([prompt_embeds, rest])[None], prompt, context + target)
            logp.append(logprobs[0, len(context):].sum())
        (grad,) = torch.autograd.grad(logp[0] - logp[1], prompt_embeds)
    return _dot(grad, prompt_embeds, prompt), float(logp[0].detach()), float(logp[1].detach())


def _check_decoder(loaded) -> None:
    if getattr(loaded.model.config, "is_encoder_decoder", False):
        raise ConfigError("attribution needs a decoder-only model; this one is encoder-decoder")


@torch.inference_mode()
def _base(loaded, layout: Layout):
    """((R, V) float logprobs of every reply position, the DynamicCache of the whole sequence)."""
    out = loaded.model(input_ids=torch.tensor([layout.ids], device=loaded.device), use_cache=True)
    prompt = len(layout.prompt_ids)
    logits = out.logits[0, prompt - 1: prompt - 1 + len(layout.reply_ids)].float()
    return torch.log_softmax(logits, dim=-1), out.cache


def _baseline(loaded, prompt: int) -> torch.Tensor:
    """(1, P, C): the vocabulary's mean embedding at every prompt position, an input that says no token
    in particular, where IG starts. Not zeros (nor a pad token, whose row is zero in many models): the
    first RMSNorm/LayerNorm turns a path out of zero into a near-step (it rescales any tiny vector to
    full size), which 64 Gauss-Legendre points resolve only to ~3%."""
    with torch.no_grad():
        mean = loaded.model.get_input_embeddings().weight.mean(dim=0)
    return mean.expand(1, prompt, -1).clone()


def _embed(loaded, ids: list[int]) -> torch.Tensor:
    """(T, C) input embeddings, detached: the leaf the gradients are taken against."""
    with torch.no_grad():
        return loaded.model.get_input_embeddings()(torch.tensor(ids, device=loaded.device)).detach()


def _reply_logprobs(loaded, embeds: torch.Tensor, prompt: int, reply_ids: list[int]) -> torch.Tensor:
    """(B, R) log p(reply token t | all before it) from (B, P + R, C) input embeddings."""
    count = len(reply_ids)
    if _keeps_logits(loaded.model):  # the reply's positions only: (B, R+1, V), not (B, T, V), in memory
        logits = loaded.model(inputs_embeds=embeds, logits_to_keep=count + 1).logits[:, :count]
    else:
        logits = loaded.model(inputs_embeds=embeds).logits[:, prompt - 1: prompt - 1 + count]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    target = _ids(loaded, reply_ids)[None, :, None].expand(embeds.shape[0], -1, -1)
    return logprobs.gather(-1, target)[..., 0]


def _keeps_logits(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a peft adapter
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _dot(grad: torch.Tensor, embeds: torch.Tensor, prompt: int) -> list[float]:
    """Per prompt token: gradient · embedding, summed over the embedding's C dimensions."""
    return (grad[:prompt].float() * embeds[:prompt].detach().float()).sum(-1).tolist()


def _ids(loaded, ids: list[int]) -> torch.Tensor:
    return torch.tensor(ids, device=loaded.device)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def finite(values: list[float]) -> list[float]:
    """NaN and infinities as 0, for JSON and colour scales."""
    return [v if math.isfinite(v) else 0.0 for v in values]
