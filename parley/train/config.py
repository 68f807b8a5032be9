"""The typed configuration of `parley train`: defaults, TOML files, `--set key=value`, validation.

    config = load_config("train.toml", overrides=["max_steps=20", "lora.r=16"])
    print(describe())            # every key, its default and its note (`parley train --help-config`)

Every key has a default and the note written beside its field below; `describe()` reads those notes
from this file's source, so the help cannot drift from the code. A TOML file and `--set` flags only
override defaults. Values are checked against the field's type (and `Literal` choices) as they are
read, and `check()` checks ranges and combinations, so every mistake is a ConfigError that names the
key as the user wrote it and what is allowed — before any model or data is loaded.

Relative inputs in a config file (data.sources, a model directory) are read relative to the file,
so a recipe runs from any directory; out_dir stays relative to where the command runs.

`--set` values are parsed as TOML values when they can be (`16`, `true`, `[1, 0.5]`, `"a b"`) and
taken as bare strings otherwise (`out_dir=runs/x`); a bare string given to a list key is a one-item
list (`data.sources=chatterbot`).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import inspect
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from parley.data.cleaning import CleanConfig
from parley.errors import ConfigError


@dataclass
class DataConfig:
    """What to train on."""

    sources: list[str] = field(default_factory=list)  # prepared dirs (`parley data prepare --out`) or `--source` specs, prepared into RUN_DIR/data first
    weights: list[float] = field(default_factory=list)  # per source: times its rows are seen per epoch (1 = once, 0.5 = a random half); [] = all 1
    max_len: int = 0  # longest training sequence in tokens (longer rows are cut from the end); 0 = the model's context window
    val_rows: int = 0  # validation rows evaluated at each evaluation; 0 = all of them
    val_ratio: float = 0.05  # share of a raw source's records held out for validation (by content hash)
    pack: bool = False  # when preparing raw sources: concatenate short examples up to max_len (attention stays within each)
    clean: CleanConfig = field(default_factory=CleanConfig)  # when preparing raw text: duplicate and quality rules (each source deduplicated on its own)


@dataclass
class LoraConfig:
    """Low-rank adapters (peft). r = 0 trains every weight instead."""

    r: int = 0  # LoRA rank: 0 = full fine-tuning, 8-64 = train small adapters only (far less memory)
    alpha: int = 16  # LoRA scale numerator: the adapter's update is scaled by alpha / r
    dropout: float = 0.05  # dropout on the adapter's input, during training only
    target_modules: list[str] = field(default_factory=list)  # module names to adapt; [] = peft's default for the architecture, ["all-linear"] = every linear layer


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule."""

    lr: float = 2e-4  # peak learning rate, reached at the end of warmup
    schedule: Literal["cosine", "linear", "constant"] = "cosine"  # decay after warmup: cosine or linear to 0, or constant
    warmup_steps: int = 0  # optimizer steps of linear warmup from 0 to lr
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.999  # AdamW second-moment decay
    eps: float = 1e-8  # AdamW denominator term
    grad_clip: float = 1.0  # clip the global gradient norm to this before each step; 0 = off


@dataclass
class EvalConfig:
    """Validation loss during training."""

    every: int = 50  # evaluate every N optimizer steps (and always at the end); 0 = only at the end
    at_start: bool = True  # also evaluate the untouched model before the first step (step 0: the "before" figure)
    patience: int = 0  # early stopping: stop after N evaluations without improvement; 0 = never stop early
    min_delta: float = 0.0  # the least drop in validation loss that counts as an improvement


@dataclass
class CheckpointConfig:
    """Resumable checkpoints under RUN_DIR/checkpoints."""

    every: int = 0  # save every N optimizer steps; 0 = at each evaluation
    keep_last: int = 2  # how many of the newest checkpoints to keep (at least 1)
    keep_best: bool = True  # also keep the checkpoint with the lowest validation loss
    final: Literal["last", "best"] = "last"  # weights saved as RUN_DIR/final: the last step's, or the best validation loss's


@dataclass
class LogConfig:
    """What a run reports while it trains."""

    every: int = 1  # append train loss, learning rate and tokens/s to metrics.jsonl every N steps
    progress: bool = True  # a live progress bar (loss, lr, tokens/s, ETA) on the main process
    trackers: list[str] = field(default_factory=list)  # also log through accelerate's trackers: tensorboard, wandb (must be installed)


@dataclass
class DpoConfig:
    """Preference tuning, when method = "dpo" (see parley/train/dpo.py)."""

    beta: float = 0.1  # how far the tuned model may move from the reference: lower moves further
    loss: Literal["sigmoid", "hinge", "ipo"] = "sigmoid"  # sigmoid = DPO, hinge = SLiC, ipo = IPO (log-ratios averaged per token)
    reference: str = ""  # the reference model: "" = the starting model (LoRA: its adapters disabled, no copy; full: a frozen copy), or a model spec


@dataclass
class TrainConfig:
    """One fine-tuning run. Sections: data, lora, optim, eval, checkpoint, log, dpo."""

    model: str = "smollm2"  # the model to start from: smollm2 (built in), a save_pretrained dir, or a hub id
    out_dir: str = "runs/train"  # RUN_DIR: config.json, metrics.jsonl, loss.png, checkpoints/, final/
    max_steps: int = 0  # optimizer steps to train; 0 = `epochs` passes over the data
    epochs: float = 1.0  # passes over the (weighted) training data when max_steps is 0
    batch_size: int = 8  # rows per micro-batch on each process
    grad_accum: int = 1  # micro-batches per optimizer step; global batch = batch_size x grad_accum x processes
    precision: Literal["fp32", "bf16"] = "fp32"  # fp32, or bf16 autocast with fp32 master weights
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~30% slower
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = the GPU when there is one
    seed: int = 0  # fixes adapter init, data order and dropout, so a run (and its resume) is reproducible
    method: Literal["sft", "dpo"] = "sft"  # sft: learn the replies in the data; dpo: prefer chosen to rejected replies (preference data)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)

    @property
    def tuning(self) -> str:
        """Which weights train: `lora` (adapters) or `full` (every weight)."""
        return "lora" if self.lora.r > 0 else "full"

    def check(self) -> TrainConfig:
        """Ranges and combinations; raises ConfigError naming the key."""
        rules = [
            ("max_steps", self.max_steps >= 0, "0 (use epochs) or more"),
            ("epochs", self.epochs > 0 and math.isfinite(self.epochs), "a positive number"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("grad_accum", self.grad_accum >= 1, "at least 1"),
            ("out_dir", bool(self.out_dir.strip()), "a directory path"),
            ("model", bool(self.model.strip()), "smollm2, a model directory or a hub id"),
            ("data.max_len", self.data.max_len >= 0, "0 (the context window) or more"),
            ("data.val_rows", self.data.val_rows >= 0, "0 (all) or more"),
            ("data.val_ratio", 0 <= self.data.val_ratio < 1, "in [0, 1)"),
            ("data.weights", all(w >= 0 and math.isfinite(w) for w in self.data.weights), "numbers >= 0"),
            ("lora.r", self.lora.r >= 0, "0 (full fine-tuning) or a rank such as 8, 16, 64"),
            ("lora.alpha", self.lora.alpha > 0, "a positive integer"),
            ("lora.dropout", 0 <= self.lora.dropout < 1, "in [0, 1)"),
            ("optim.lr", 0 < self.optim.lr < 1, "in (0, 1), e.g. 2e-4"),
            ("optim.warmup_steps", self.optim.warmup_steps >= 0, "0 or more"),
            ("optim.weight_decay", self.optim.weight_decay >= 0, "0 or more"),
            ("optim.beta1", 0 <= self.optim.beta1 < 1, "in [0, 1)"),
            ("optim.beta2", 0 <= self.optim.beta2 < 1, "in [0, 1)"),
            ("optim.eps", self.optim.eps > 0, "a small positive number"),
            ("optim.grad_clip", self.optim.grad_clip >= 0, "0 (off) or a positive norm"),
            ("eval.every", self.eval.every >= 0, "0 (only at the end) or more"),
            ("eval.patience", self.eval.patience >= 0, "0 (off) or more"),
            ("eval.min_delta", self.eval.min_delta >= 0, "0 or more"),
            ("checkpoint.every", self.checkpoint.every >= 0, "0 (at each evaluation) or more"),
            ("checkpoint.keep_last", self.checkpoint.keep_last >= 1, "at least 1"),
            ("log.every", self.log.every >= 1, "at least 1"),
            ("dpo.beta", self.dpo.beta > 0 and math.isfinite(self.dpo.beta), "a positive number, e.g. 0.1"),
        ]
        for key, ok, allowed in rules:
            if not ok:
                raise ConfigError(f"{key} = {_value_at(self, key)!r} is not allowed: it must be {allowed}")
        try:
            self.data.clean.check()
        except ConfigError as e:
            raise ConfigError(f"data.{e}") from None
        if not self.data.sources:
            raise ConfigError("data.sources is empty: name a prepared dir or a source, e.g. --set data.sources=chatterbot")
        if self.data.weights and len(self.data.weights) != len(self.data.sources):
            raise ConfigError(
                f"data.weights has {len(self.data.weights)} numbers for {len(self.data.sources)} data.sources: "
                "give one weight per source, or none"
            )
        if self.data.weights and not any(self.data.weights):
            raise ConfigError("data.weights are all 0: at least one source must be trained on")
        for name in self.log.trackers:
            if name not in TRACKERS:
                raise ConfigError(f"log.trackers: {name!r} is not one of {', '.join(TRACKERS)}")
            if importlib.util.find_spec(TRACKERS[name]) is None:
                raise ConfigError(f"log.trackers: {name} is not installed (pip install {TRACKERS[name]})")
        return self


TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb"}  # tracker name → the module it needs


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """Defaults, then the TOML file at `path` (if any), then each `key=value` override; checked."""
    config = TrainConfig()
    if path is not None:
        path = Path(path)
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        _merge(config, table, prefix="", origin=str(path))
        _anchor_inputs(config, path.resolve().parent)
    apply_overrides(config, overrides)
    return config.check()


def _anchor_inputs(config: TrainConfig, base: Path) -> None:
    """A config file's relative inputs (data.sources, a model directory) are found beside the file,
    whatever the working directory; its outputs (out_dir) go where the command runs, like --set's."""
    from parley.data.sources import anchored

    config.data.sources = [anchored(spec, base) for spec in config.data.sources]
    model = Path(config.model).expanduser()
    if not model.is_absolute() and (base / model).is_dir():
        config.model = str(base / model)


def from_dict(table: dict) -> TrainConfig:
    """A config from `to_dict()`'s output (a run's saved config.json)."""
    config = TrainConfig()
    _merge(config, table, prefix="", origin="config.json")
    return config


def to_dict(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply `key=value` strings (the `--set` flags) in order."""
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set max_steps=100")
        _merge(config, _nest(key, _parse_value(text.strip())), prefix="", origin="--set")
    return config


def describe() -> str:
    """Every key with its type, default and note: the text of `parley train --help-config`."""
    lines = []
    for prefix, cls in _sections():
        notes = field_notes(cls)
        header = f"[{prefix.rstrip('.')}]" if prefix else "(top level)"
        lines.append(f"{header}  {inspect.getdoc(cls).splitlines()[0]}")
        default = cls()
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(getattr(default, f.name)):
                continue
            value = _toml_value(getattr(default, f.name))
            lines.append(f"  {prefix}{f.name} = {value}\n      {notes[f.name]}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def field_notes(cls) -> dict[str, str]:
    """The `# note` written beside each field of dataclass `cls`, read from its source."""
    notes = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+): [^#]*?  # (.+)$", line)
        if m:
            notes[m.group(1)] = m.group(2).strip()
    return notes


def _sections(prefix: str = "", cls=TrainConfig):
    """(key prefix, dataclass) of every section, nested ones (data.clean) after their parent."""
    yield prefix, cls
    default = cls()
    for f in dataclasses.fields(cls):
        value = getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            yield from _sections(f"{prefix}{f.name}.", type(value))


def _merge(target, table: dict, prefix: str, origin: str) -> None:
    hints = typing.get_type_hints(type(target))
    names = [f.name for f in dataclasses.fields(target)]
    for name, value in table.items():
        key = prefix + name
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            where = f"[{prefix.rstrip('.')}] has" if prefix else "the top level has"
            raise ConfigError(f"{origin}: unknown key {key!r}{hint}; {where}: {', '.join(names)}")
        current = getattr(target, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: {key} is a section; set its keys, e.g. {key}.{dataclasses.fields(current)[0].name}=...")
            _merge(current, value, prefix=key + ".", origin=origin)
        else:
            setattr(target, name, _coerce(key, value, hints[name], origin))


def _coerce(key: str, value, kind, origin: str):
    """`value` as the field's type, or a ConfigError naming the key and what it takes."""
    origin_type = typing.get_origin(kind)
    if origin_type is Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            raise ConfigError(f"{origin}: {key} = {value!r} is not allowed: choose one of {', '.join(map(str, choices))}")
        return value
    if origin_type is list:
        (item,) = typing.get_args(kind)
        items = value if isinstance(value, list) else [value]
        return [_coerce(f"{key}[{i}]", v, item, origin) for i, v in enumerate(items)]
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{origin}: {key} = {value!r} is not allowed: it must be true or false")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{origin}: {key} = {value!r} is not allowed: it must be a whole number")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{origin}: {key} = {value!r} is not allowed: it must be a number")
    if kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `--set model=7` names a directory called 7
        raise ConfigError(f"{origin}: {key} = {value!r} is not allowed: it must be a string")
    raise TypeError(f"config field {key} has an unsupported type {kind}")  # a bug in this module, not user input


def _parse_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _nest(key: str, value) -> dict:
    table = value
    for part in reversed(key.split(".")):
        table = {part: table}
    return table


def _value_at(config: TrainConfig, key: str):
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)
