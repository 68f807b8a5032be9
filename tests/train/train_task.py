"""The synthetic dialogue task the training tests learn, its tokenizer, and helpers.

The task: "I am NAME from CITY." → "Hi NAME! How is CITY?". Some (name, city) pairs never appear in
training; a model that learned the task (copy the two words into the reply's frame) answers them
exactly under greedy decoding, one that memorised the training pairs does not. A second prompt form
and reply frame ("Greet NAME of CITY." → "Hey NAME! Is CITY nice?") give LoRA a mapping to change.

The tokenizer is a byte-level BPE trained on the task's text (exact round trip, ~340 tokens), so
tiny models train in seconds; the chat template is Parley's documented default.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

NAMES = ["Ada", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana", "Ivo", "Jen"]
CITIES = ["Oslo", "Rome", "Lima", "Kyiv", "Pune", "Doha", "Bern", "Riga", "Baku", "Nice"]
HELD_OUT = [(NAMES[i], CITIES[(i * 3 + 1) % 10]) for i in range(10)]  # each name and city still seen elsewhere
PROMPTS = {"intro": "I am {name} from {city}.", "greet": "Greet {name} of {city}."}
FRAMES = {"hi": "Hi {name}! How is {city}?", "hey": "Hey {name}! Is {city} nice?"}
EOS = "<|endoftext|>"
REPO = Path(__file__).resolve().parents[2]


def prompt(name: str, city: str, form: str = "intro") -> list[dict]:
    return [{"role": "user", "content": PROMPTS[form].format(name=name, city=city)}]


def reply(name: str, city: str, frame: str = "hi") -> str:
    return FRAMES[frame].format(name=name, city=city)


def train_pairs() -> list[tuple[str, str]]:
    return [(n, c) for n in NAMES for c in CITIES if (n, c) not in HELD_OUT]


def write_task(path: Path, *tasks: tuple[str, str]) -> Path:
    """Dialogues for each (prompt form, reply frame) as OpenAI-style `messages` JSONL; held-out pairs left out."""
    with open(path, "w") as f:
        for form, frame in tasks or [("intro", "hi")]:
            for n, c in train_pairs():
                messages = prompt(n, c, form) + [{"role": "assistant", "content": reply(n, c, frame)}]
                f.write(json.dumps({"messages": messages}) + "\n")
    return path


def build_tokenizer():
    """A byte-level BPE trained on the task's text, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    pairs = train_pairs() + HELD_OUT
    texts = [p.format(name=n, city=c) for n, c in pairs for p in [*PROMPTS.values(), *FRAMES.values()]]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=[EOS, "<|user|>", "<|assistant|>", "<|system|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    bpe.train_from_iterator(texts * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, bos_token=EOS, pad_token=EOS)


def tiny_llama(tokenizer, **overrides):
    """A random Llama-style model over `tokenizer` (64 wide, 2 layers); `overrides` go to LlamaConfig."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    settings = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                    bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    return LlamaForCausalLM(LlamaConfig(**{**settings, **overrides}))


def save_model(model, tokenizer, path: Path) -> str:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def run_cli(*args: str, env: dict | None = None, timeout: float = 240, launcher: list[str] | None = None):
    """`parley ARGS` in a subprocess (optionally under a launcher such as `accelerate launch`)."""
    command = (launcher or [sys.executable]) + [str(Path(sys.executable).parent / "parley"), *args]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment, cwd=REPO)


def write_preferences(path: Path, pairs: list[tuple[str, str]] | None = None) -> Path:
    """The preference task, as TRL prompt/chosen/rejected JSONL: an introduction is answered in the "hi"
    frame and a greeting request in the "hey" frame; the rejected reply is the other frame, or the right
    frame with another person's name (so the preference needs the prompt's name copied, not one
    memorised string)."""
    with open(path, "w") as f:
        for i, (n, c) in enumerate(pairs if pairs is not None else train_pairs()):
            other = NAMES[(NAMES.index(n) + 1 + i % 3) % len(NAMES)]
            for form, good, bad in (("intro", "hi", "hey"), ("greet", "hey", "hi")):
                rejected = reply(n, c, bad) if i % 2 else reply(other, c, good)
                f.write(json.dumps({"prompt": prompt(n, c, form), "chosen": [{"role": "assistant", "content": reply(n, c, good)}],
                                    "rejected": [{"role": "assistant", "content": rejected}]}) + "\n")
    return path
