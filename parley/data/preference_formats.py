"""Preference records: a context and a better and/or a worse reply, from the formats people publish and
from the feedback in Parley's own store.

    trl            {"prompt", "chosen", "rejected"}: strings (a one-turn prompt and two replies), or message
                   lists (the prompt's messages; each reply a one-message assistant list); without
                   "prompt", chosen and rejected are whole conversations sharing their context (TRL's
                   implicit prompt), as in binarized UltraFeedback ({"prompt", "chosen": [user, assistant],
                   "rejected": [...], "score_chosen", ...}), whose messages repeat the prompt
    hh             Anthropic HH-RLHF: "chosen"/"rejected" transcripts "\n\nHuman: ...\n\nAssistant: ..."
                   that differ in their last Assistant turn
    ultrafeedback  the raw UltraFeedback rows {"instruction", "completions": [{"response", "overall_score"}]},
                   binarized here: the highest score is chosen, the lowest rejected (ties are refused)
    unpaired       TRL's unpaired (KTO) rows {"prompt", "completion", "label": true|false}
    feedback       the store (`--source feedback[:DB],since=YYYY-MM-DD,until=...,model=SPEC`): edits and
                   picks are pairs, thumbs up/down are unpaired labels

`detect(obj)` names the layout of one JSON object. A record that cannot be read is a `Bad`
(`file:line: what is wrong`), as everywhere in `parley data`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from parley.data.chat_formats import SHAREGPT_ROLES
from parley.data.records import CHAT_ROLES, Bad
from parley.errors import ConfigError, DataError

LAYOUTS = ("trl", "hh", "ultrafeedback", "unpaired")
HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


@dataclass(frozen=True)
class Preference:
    """One judgement: the context (ending with the user's message) and a better and/or worse reply."""

    prompt: list[dict]  # [{role, content}], system first, last a user message
    chosen: str | None  # the better reply (None: only a worse one is known, a thumbs down)
    rejected: str | None  # the worse reply (None: only a better one is known, a thumbs up)
    source: str
    line: int | None = None
    meta: dict = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.line is not None else self.source

    @property
    def paired(self) -> bool:
        return self.chosen is not None and self.rejected is not None

    def content_hash(self) -> str:
        """SHA-256 of the context alone: every judgement of one prompt lands in the same split."""
        canonical = json.dumps(self.prompt, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def detect(obj) -> str | None:
    """The preference layout of one JSON object, or None."""
    if not isinstance(obj, dict):
        return None
    if "chosen" in obj and "rejected" in obj:
        if "prompt" not in obj and isinstance(obj["chosen"], str) and HH_TURN.search(obj["chosen"]):
            return "hh"
        return "trl"
    if "completion" in obj and "label" in obj:
        return "unpaired"
    if "completions" in obj and "instruction" in obj:
        return "ultrafeedback"
    return None


def read(obj, source: str, line: int | None) -> Preference | Bad:
    """A record of any layout `detect` knows."""
    layout = detect(obj)
    if layout is None:
        keys = ", ".join(map(str, obj.keys())) if isinstance(obj, dict) else type(obj).__name__
        return Bad(source, line, f"not a preference record (keys: {keys}); expected prompt/chosen/rejected, "
                                 "HH-RLHF chosen/rejected transcripts, prompt/completion/label or "
                                 "instruction/completions")
    return READERS[layout](obj, source, line)


def from_trl(obj: dict, source: str, line: int | None) -> Preference | Bad:
    chosen, rejected = obj.get("chosen"), obj.get("rejected")
    prompt = obj.get("prompt")
    if isinstance(chosen, str) and isinstance(rejected, str):
        if not isinstance(prompt, (str, list)):
            return Bad(source, line, 'chosen and rejected are text but there is no "prompt": add the prompt '
                                     "(or give whole conversations as message lists)")
        context = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return _checked(context, chosen, rejected, source, line)
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        return Bad(source, line, '"chosen" and "rejected" must both be text or both be message lists')
    chosen, rejected = [_message(m) for m in chosen], [_message(m) for m in rejected]
    if isinstance(prompt, list) or not chosen or chosen[0].get("role") == "assistant":
        context = [_message(m) for m in prompt] if isinstance(prompt, list) else \
            [{"role": "user", "content": prompt}] if isinstance(prompt, str) else []
    else:  # implicit prompt: the messages both conversations share
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        context, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    replies = []
    for name, messages in (("chosen", chosen), ("rejected", rejected)):
        if len(messages) != 1 or not isinstance(messages[0], dict) or messages[0].get("role") != "assistant":
            return Bad(source, line, f'"{name}" must continue the prompt with exactly one assistant message '
                                     f"(it has {len(messages)} message(s) after the shared context)")
        replies.append(messages[0].get("content"))
    return _checked(context, replies[0], replies[1], source, line)


def from_hh(obj: dict, source: str, line: int | None) -> Preference | Bad:
    conversations = []
    for name in ("chosen", "rejected"):
        text = obj.get(name)
        if not isinstance(text, str):
            return Bad(source, line, f'"{name}" is not a transcript string')
        parts = HH_TURN.split(text)
        if parts[0].strip():
            return Bad(source, line, f'"{name}" must start with "\\n\\nHuman: "')
        turns = [{"role": "user" if who == "Human" else "assistant", "content": said.strip()}
                 for who, said in zip(parts[1::2], parts[2::2])]
        if not turns or turns[-1]["role"] != "assistant":
            return Bad(source, line, f'"{name}" must end with an "Assistant:" turn')
        conversations.append(turns)
    chosen, rejected = conversations
    if chosen[:-1] != rejected[:-1]:
        return Bad(source, line, "chosen and rejected differ before their last Assistant turn; "
                                 "only the last reply may differ")
    return _checked(chosen[:-1], chosen[-1]["content"], rejected[-1]["content"], source, line)


def from_ultrafeedback(obj: dict, source: str, line: int | None) -> Preference | Bad:
    completions = obj.get("completions")
    if not isinstance(completions, list) or len(completions) < 2:
        return Bad(source, line, '"completions" must list at least two {"response", "overall_score"}')
    scored = []
    for i, c in enumerate(completions, 1):
        score = c.get("overall_score") if isinstance(c, dict) else None
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not isinstance(c.get("response"), str):
            return Bad(source, line, f"completion {i} lacks a text \"response\" and a numeric \"overall_score\"")
        scored.append((score, c["response"]))
    best, worst = max(scored, key=lambda s: s[0]), min(scored, key=lambda s: s[0])
    if best[0] == worst[0]:
        return Bad(source, line, f"every completion has the same overall_score ({best[0]}): no preference")
    return _checked([{"role": "user", "content": obj.get("instruction")}], best[1], worst[1], source, line,
                    score_chosen=best[0], score_rejected=worst[0])


def from_unpaired(obj: dict, source: str, line: int | None) -> Preference | Bad:
    prompt, completion, label = obj.get("prompt"), obj.get("completion"), obj.get("label")
    if not isinstance(label, bool):
        return Bad(source, line, f'"label" must be true (a good reply) or false (a bad one), not {label!r}')
    context = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else \
        [_message(m) for m in prompt] if isinstance(prompt, list) else None
    if context is None:
        return Bad(source, line, '"prompt" must be text or a message list')
    if isinstance(completion, list) and len(completion) == 1 and isinstance(completion[0], dict):
        completion = completion[0].get("content")
    return _checked(context, completion if label else None, None if label else completion, source, line)


READERS = {"trl": from_trl, "hh": from_hh, "ultrafeedback": from_ultrafeedback, "unpaired": from_unpaired}


def from_store(db: str, options: dict[str, str]) -> Iterator[Preference | Bad]:
    """The feedback in the store at `db` ('' = $PARLEY_HOME/parley.db): edits and picks as pairs,
    thumbs as unpaired labels. Options: since=, until= (ISO dates or times, UTC), model=."""
    from parley.store import Store

    since, until = (_when(options, k) for k in ("since", "until"))
    if db and not Path(db).expanduser().is_file():
        raise DataError(f"{db}: no such conversation database (the default is $PARLEY_HOME/parley.db: "
                        "write just --source feedback)")
    store = Store(Path(db).expanduser() if db else None)
    try:
        for item in store.feedback(since=since, until=until, model=options.get("model") or None):
            source = f"{store.path}#feedback"
            yield _checked(item.context, item.chosen, item.rejected, source, item.id, kind=item.kind,
                           conversation=item.conversation_id, model=item.model)
    finally:
        store.close()


def _when(options: dict[str, str], key: str) -> float | None:
    text = options.get(key)
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{key}={text!r} is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC)") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def _message(m):
    """A message as a plain {role, content}, ShareGPT's {from, value} accepted too."""
    if isinstance(m, dict) and "from" in m and "role" not in m:
        return {"role": SHAREGPT_ROLES.get(str(m["from"]).lower(), m["from"]), "content": m.get("value")}
    return m


def _checked(context, chosen, rejected, source: str, line: int | None, **meta) -> Preference | Bad:
    problem = prompt_problem(context)
    if problem:
        return Bad(source, line, f"prompt: {problem}")
    for name, reply in (("chosen", chosen), ("rejected", rejected)):
        if reply is not None and (not isinstance(reply, str) or not reply.strip()):
            return Bad(source, line, f'"{name}" reply is empty or not text')
    if chosen is None and rejected is None:
        return Bad(source, line, "neither a chosen nor a rejected reply")
    if chosen is not None and chosen == rejected:
        return Bad(source, line, "chosen and rejected are the same text: no preference")
    clean = [{"role": m["role"], "content": m["content"]} for m in context]
    return Preference(clean, chosen, rejected, source, line, meta)


def prompt_problem(messages) -> str | None:
    """Why `messages` is not a context a reply can answer (ends with the user), or None."""
    if not isinstance(messages, list) or not messages:
        return "no messages"
    for i, m in enumerate(messages, 1):
        if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES or not isinstance(m.get("content"), str):
            return f"message {i} is not {{role: {'|'.join(CHAT_ROLES)}, content: text}}"
        if m["role"] == "system" and i > 1:
            return f"message {i} is a system message after the first"
    if messages[-1]["role"] != "user":
        return "the last message must be the user's (the replies answer it)"
    return None
