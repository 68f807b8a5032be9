"""The training data of a run: prepared dirs as they are, raw sources prepared into RUN_DIR/data first.

`data.sources` entries are either directories written by `parley data prepare` (they hold a
manifest.json) or anything `parley data prepare --source` takes (`chatterbot`, `pairs:DIR`, ...). Raw
sources are prepared once, each into its own RUN_DIR/data/NN directory, with the run's tokenizer and
chat template; a resumed run reuses them, so it reads exactly the rows the first attempt read.

Conversations (SFT) and preferences (DPO, `method = "dpo"`) are prepared differently; a source of the
other kind is refused with the fix. DPO reads only paired rows (unpaired thumbs are left out).

Refused, with the reason: a prepared dir whose tokenizer (vocabulary fingerprint) is not the model's,
and prepared dirs that disagree on the chat template. The run trains with the data's template (the
model's own when every source is raw) and saves that one with the model: the template a model was
trained with travels with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from parley.data.manifest import FILENAME as MANIFEST
from parley.data.manifest import Manifest
from parley.errors import DataError
from parley.templates import fingerprint
from parley.train.batches import seq2seq_rows

COLUMNS = ("input_ids", "labels", "position_ids")  # what training reads; `source` is for people
PREFERENCE_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")  # what DPO reads


@dataclass
class TrainData:
    train: object  # datasets.Dataset: every source's train split, concatenated in source order
    sizes: list[int]  # train rows per source
    val: object | None  # datasets.Dataset of all validation splits, or None when there are none
    template: str  # the chat template the data was rendered with
    dirs: list[Path]  # the prepared directory of each source


def is_prepared(spec: str) -> bool:
    return (Path(spec).expanduser() / MANIFEST).is_file()


def preflight(specs: list[str]) -> None:
    """Cheap checks of every source, before any model is loaded: parseable, and present on disk."""
    from parley.data.sources import BUILTINS, parse

    for i, spec in enumerate(specs):
        path = Path(spec).expanduser()
        if is_prepared(spec):
            continue
        if path.is_dir() and (path / "dataset_dict.json").is_file():
            raise DataError(f"data.sources[{i}]: {spec} has no {MANIFEST}: prepare it with `parley data prepare`")
        source = parse(spec)
        if source.format in BUILTINS or source.format == "hf" or source.location.startswith(("hf:", "git@")) or "://" in source.location:
            continue
        if not Path(source.location).expanduser().exists():
            raise DataError(f"data.sources[{i}]: {source.location}: no such file or directory")


def open_data(specs: list[str], run_dir: Path, tokenizer, template: str, accelerator, *,
              max_len: int, val_ratio: float, pack: bool, context_window: int, seq2seq: bool, say,
              clean=None, kind: str = "sft") -> TrainData:
    """Prepare what is raw (main process first), check every manifest, open the splits."""
    import datasets

    datasets.disable_progress_bars()
    prepared = [Path(s).expanduser() for s in specs if is_prepared(s)]
    template = _agreed_template(prepared, template)
    dirs = []
    with accelerator.main_process_first():
        for i, spec in enumerate(specs):
            if is_prepared(spec):
                dirs.append(Path(spec).expanduser())
                continue
            target = Path(run_dir) / "data" / f"{i:02d}"
            if not _prepared_for(target, spec):
                if accelerator.is_main_process:
                    say(f"preparing data.sources[{i}] {spec} → {target}")
                _prepare(spec, target, tokenizer, template, max_len, val_ratio, pack, context_window, clean)
            dirs.append(target)
    for spec, d in zip(specs, dirs):
        _check_tokenizer(d, spec, tokenizer)
        _check_kind(d, spec, kind)

    trains, vals = [], []
    for d in dirs:
        splits = datasets.load_from_disk(str(d))
        trains.append(_training_columns(splits["train"], seq2seq, kind))
        if "validation" in splits and len(splits["validation"]):
            vals.append(_training_columns(splits["validation"], seq2seq, kind))
    if kind == "preference" and not sum(len(t) for t in trains):
        raise DataError(f"{', '.join(specs)}: no chosen/rejected pairs to train on (thumbs up or down alone "
                        "are unpaired; DPO learns from edits, picks between versions, and paired records)")
    sizes = [len(t) for t in trains]
    train = datasets.concatenate_datasets(trains) if len(trains) > 1 else trains[0]
    val = (datasets.concatenate_datasets(vals) if len(vals) > 1 else vals[0]) if vals else None
    return TrainData(train=train, sizes=sizes, val=val, template=template, dirs=dirs)


def _prepare(spec, target, tokenizer, template, max_len, val_ratio, pack, context_window, clean) -> None:
    from parley.data.cleaning import CleanConfig
    from parley.data.prepare import PrepareConfig, prepare

    config = PrepareConfig(max_len=max_len, val_ratio=val_ratio, pack=pack, overwrite=True, clean=clean or CleanConfig())
    prepare([spec], target, tokenizer, template, config, model="", context_window=context_window)


def _prepared_for(target: Path, spec: str) -> bool:
    """Whether `target` already holds `spec` prepared (by an earlier attempt of this run)."""
    if not (target / MANIFEST).is_file():
        return False
    return [s.get("spec") for s in Manifest.read(target).sources] == [spec]


def _agreed_template(prepared: list[Path], model_template: str) -> str:
    found = {}
    for d in prepared:
        found.setdefault(Manifest.read(d).chat_template or model_template, d)
    if len(found) > 1:
        names = ", ".join(f"{d} ({fingerprint(t)})" for t, d in found.items())
        raise DataError(f"the prepared data sources use different chat templates: {names}; prepare them again with one model")
    return next(iter(found), model_template)


def _check_tokenizer(d: Path, spec: str, tokenizer) -> None:
    from parley.data.prepare import tokenizer_info

    theirs = Manifest.read(d).tokenizer
    ours = tokenizer_info(tokenizer)
    if theirs.get("vocab_fingerprint") != ours["vocab_fingerprint"]:
        raise DataError(
            f"{spec} was prepared for another tokenizer ({theirs.get('name') or 'unknown'}, vocabulary "
            f"{theirs.get('vocab_fingerprint')}) than the model's ({ours['name']}, {ours['vocab_fingerprint']}): "
            f"its token ids would mean other words; prepare it again with `parley data prepare --model` set to the model you train"
        )


def _check_kind(d: Path, spec: str, kind: str) -> None:
    theirs = Manifest.read(d).settings.get("kind", "sft")
    if theirs != kind:
        fix = ("set method=dpo to learn from preferences" if theirs == "preference" else
               "method=dpo needs preference data: --source feedback, prefs:FILE, or a prompt/chosen/rejected file")
        raise DataError(f"{spec} holds {'preferences' if theirs == 'preference' else 'conversations'}, "
                        f"not {'preferences' if kind == 'preference' else 'conversations'}: {fix}")


def _training_columns(split, seq2seq: bool, kind: str = "sft"):
    if kind == "preference":  # DPO needs both replies; a thumbs up or down alone is left out
        split = split.select_columns(list(PREFERENCE_COLUMNS))
        return split.filter(lambda r: bool(r["chosen_ids"]) and bool(r["rejected_ids"]), keep_in_memory=True)
    split = split.select_columns([c for c in COLUMNS if c in split.column_names])
    if seq2seq:
        split = split.map(seq2seq_rows, batched=True, remove_columns=split.column_names, keep_in_memory=True)
    return split
