"""The training loop of `parley train`, on accelerate: one process, or many under `accelerate launch`.

    final = start(load_config("train.toml", ["max_steps=100"]))    # a new run; returns RUN_DIR/final
    final = resume(Path("runs/x"))                                  # continue a run from its newest checkpoint

What a step does: this process's micro-batches of the step (see batches.py) run forward and backward,
each micro-batch's summed token loss divided by the global batch's count of learned tokens (times the
process count, which DDP's gradient averaging divides back out) — so the gradient is the mean over
every learned token of the global batch, whatever the split over processes and accumulation. Then
clip, AdamW, scheduler. NaN/inf in the loss or gradient norm stops the run before the update, naming
the step; the last checkpoint stays the last good one.

Exact resume: the model (or adapter) weights, AdamW moments, scheduler, every process's RNG states
and the TrainState (step, tokens, best validation loss, evaluations without improvement) are in each
checkpoint; the data position is the step itself. A resumed run's final weights equal an
uninterrupted run's. RUN_DIR/config.json is written before anything slow (model load, data
preparation), so a run killed at any moment after it began can be resumed; one with no checkpoint
yet starts again from step 0.

Preference tuning (`method = "dpo"`, dpo.py): the same loop over preference rows, the loss per pair
instead of per token, DPO's rewards logged beside the loss, and RUN_DIR/final/preference.json naming
the reference model for `parley eval preference`.

Limits: the optimizer is AdamW; FSDP and DeepSpeed come from the accelerate config, untested here
beyond 2-process DDP on CPU (gloo).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from parley.errors import ConfigError
from parley.files import replace_dir, write_atomic
from parley.train import checkpoint, dataset, dpo
from parley.train.batches import Plan
from parley.train.config import TrainConfig, apply_overrides, from_dict, to_dict
from parley.train.monitor import Monitor, Speed, truncate_metrics
from parley.train.steps import RowStats, Steps

CONFIG_FILE = "config.json"
FINAL = "final"


@dataclass
class TrainState:
    """What the loop itself must remember across a resume (saved in every checkpoint)."""

    step: int = 0  # optimizer steps done
    tokens: int = 0  # tokens trained on (padding excluded)
    best_val: float = math.inf  # lowest validation loss so far
    best_step: int = 0
    stale_evals: int = 0  # evaluations since the last improvement (early stopping)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


def start(config: TrainConfig) -> Path:
    """Begin a new run in config.out_dir; refuses a directory holding a run's checkpoint or final model
    (one killed or failed before its first checkpoint has nothing to lose and is started over)."""
    config.check()
    run_dir = Path(config.out_dir).expanduser()
    if checkpoint.latest(run_dir) is not None or (run_dir / FINAL).exists():
        raise ConfigError(
            f"out_dir {run_dir} already holds a run: continue it with `parley train --resume {run_dir}`, "
            f"or choose another directory (--set out_dir=...)"
        )
    dataset.preflight(config.data.sources)
    return _run(config, resuming=False)


def resume(run_dir: Path, overrides: list[str] = ()) -> Path:
    """Continue the run in `run_dir` from its newest complete checkpoint (or from the start)."""
    run_dir = Path(run_dir).expanduser()
    saved = run_dir / CONFIG_FILE
    if not saved.is_file():  # never started, or killed within moments of starting: nothing to continue
        raise ConfigError(f"{run_dir} is not a run directory (it has no {CONFIG_FILE}): start the run again with "
                          f"`parley train --config FILE --set out_dir={run_dir}`")
    config = from_dict(json.loads(saved.read_text()))
    apply_overrides(config, list(overrides))
    config.out_dir = str(run_dir)
    config.check()
    dataset.preflight(config.data.sources)
    return _run(config, resuming=True)


def _run(config: TrainConfig, resuming: bool) -> Path:
    from accelerate.utils import set_seed

    from parley import models

    # Tied input/output embeddings are checkpointed once; accelerate warns about that on every save.
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
    accelerator = _accelerator(config)
    run_dir = Path(config.out_dir).expanduser()
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.clean_leftovers(run_dir)
        # First, before the slow model load and data preparation: from here on --resume can continue.
        write_atomic(run_dir / CONFIG_FILE, json.dumps(to_dict(config), indent=1) + "\n")
    accelerator.wait_for_everyone()

    set_seed(config.seed)  # the adapter's initial weights: the same on every process and every attempt
    with accelerator.main_process_first():  # the first use of the embedded model converts it, once
        loaded = models.load(config.model, device="cpu", dtype="float32")
    seq2seq = bool(getattr(loaded.model.config, "is_encoder_decoder", False))
    if seq2seq and config.method == "dpo":
        raise ConfigError("method = 'dpo' trains decoder-only (causal) models; this one is an encoder-decoder")
    data, plan = _data(config, loaded, run_dir, accelerator, seq2seq)
    total = config.max_steps or max(1, math.ceil(config.epochs * plan.steps_per_epoch))
    if config.optim.warmup_steps >= total:
        _say(accelerator, f"warning: optim.warmup_steps = {config.optim.warmup_steps} is not below the run's {total} "
                          f"steps, so the learning rate never reaches optim.lr = {config.optim.lr:g}: lower it "
                          f"(about a tenth of the steps is usual)")
    model, optimizer, scheduler = _optimized(loaded.model, config, seq2seq, total)
    if config.method == "dpo":
        dpo.disable_dropout(model)  # the policy must equal its reference at step 0
    model, optimizer = accelerator.prepare(model, optimizer)
    objective = _objective(config, accelerator)
    state = TrainState()
    accelerator.register_for_checkpointing(scheduler, state)
    if config.tuning == "lora":
        accelerator.register_save_state_pre_hook(_keep_trainable_weights)

    resumed_from = checkpoint.latest(run_dir) if resuming else None
    if resumed_from is not None:
        checkpoint.load(accelerator, resumed_from, strict=config.tuning == "full")
        _say(accelerator, f"resumed from {resumed_from} (step {state.step} of {total})")
    else:
        if resuming:
            _say(accelerator, f"{run_dir} has no checkpoint yet: training from step 0 with its saved config")
        set_seed(config.seed + accelerator.process_index)  # dropout differs per process
    if accelerator.is_main_process:
        truncate_metrics(run_dir / "metrics.jsonl", state.step if resumed_from else -1)
    accelerator.wait_for_everyone()

    accelerator.init_trackers("parley", config=_flat(to_dict(config)))
    monitor = Monitor(accelerator, run_dir, total, state.step, progress=config.log.progress)
    max_len = config.data.max_len or loaded.context_window
    decoder_inputs = getattr(loaded.model, "prepare_decoder_input_ids_from_labels", None) if seq2seq else None
    trainer = Steps(accelerator, model, optimizer, scheduler, data, plan,
                     RowStats(data.train, seq2seq, max_len, config.method),
                     config, seq2seq, max_len, loaded.tokenizer.pad_token_id, decoder_inputs, objective)
    try:
        _loop(trainer, state, total, config, monitor, run_dir)
        final = _save_final(accelerator, model, loaded, data.template, config, run_dir, monitor)
    finally:
        monitor.close()
        accelerator.end_training()
        if accelerator.num_processes == 1:  # let a later run in this process choose other settings (precision)
            from accelerate.state import AcceleratorState

            AcceleratorState._reset_state(reset_partial_state=True)
    return final


def _data(config: TrainConfig, loaded, run_dir: Path, accelerator, seq2seq: bool):
    """The run's data (raw sources prepared first) and the plan that groups its rows into steps."""
    data = dataset.open_data(
        config.data.sources, run_dir, loaded.tokenizer, loaded.template, accelerator,
        max_len=config.data.max_len, val_ratio=config.data.val_ratio, pack=config.data.pack, clean=config.data.clean,
        context_window=loaded.context_window, seq2seq=seq2seq, say=lambda text: _say(accelerator, text),
        kind="preference" if config.method == "dpo" else "sft",
    )
    if data.template != loaded.template:
        _say(accelerator, "training with the chat template the data was prepared with (not the model's own); "
                          "RUN_DIR/final carries it")
    plan = Plan(
        sizes=tuple(data.sizes), weights=tuple(config.data.weights or [1.0] * len(data.sizes)), seed=config.seed,
        global_batch=config.batch_size * config.grad_accum * accelerator.num_processes, batch_size=config.batch_size,
    )
    if plan.steps_per_epoch == 0:
        raise ConfigError(
            f"the global batch (batch_size x grad_accum x processes = {plan.global_batch} rows) is larger than "
            f"an epoch of training data ({plan.epoch_rows} rows): lower batch_size or grad_accum, or add data"
        )
    return data, plan


def _objective(config: TrainConfig, accelerator):
    """The DPO objective with its reference model (None for SFT, whose loss is `Steps._loss_sum`'s)."""
    if config.method != "dpo":
        return None
    reference = None  # LoRA: the policy with its adapters disabled
    if config.tuning == "full" or config.dpo.reference:
        reference = dpo.frozen_reference(config.dpo.reference or config.model, accelerator.device)
    return dpo.Objective(config.dpo, accelerator, reference)


def _optimized(model, config: TrainConfig, seq2seq: bool, total: int):
    """(trainable model, AdamW over its trainable parameters, learning-rate schedule over `total` steps)."""
    import torch
    from transformers import get_scheduler

    model = _trainable(model, config, seq2seq)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.optim.lr,
        betas=(config.optim.beta1, config.optim.beta2), eps=config.optim.eps, weight_decay=config.optim.weight_decay,
        fused=True,  # one kernel over all parameters (CPU and CUDA): a full fine-tune's step is memory-bound
    )
    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[config.optim.schedule]
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=config.optim.warmup_steps, num_training_steps=total)
    return model, optimizer, scheduler


def _loop(trainer: Steps, state: TrainState, total: int, config: TrainConfig, monitor: Monitor, run_dir: Path) -> None:
    speed = Speed()
    eval_every = config.eval.every
    save_every = config.checkpoint.every or eval_every
    last_saved = -1
    if state.step == 0 and config.eval.at_start:
        monitor.phase("validation")
        _record_eval(trainer.evaluate(), state, config, monitor, trainer.eval_stats)
        speed.restart()
    monitor.phase("train")
    while state.step < total:
        lr = trainer.scheduler.get_last_lr()[0]  # the rate this step uses
        loss, grad_norm, tokens, extras = trainer.step(state.step)
        state.step += 1
        state.tokens += tokens
        rate = speed.tick(tokens)
        if state.step % config.log.every == 0 or state.step == total:
            monitor.log({"step": state.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                         "tokens_per_s": round(rate, 1), "tokens": state.tokens, "time": time.time(), **extras})
        monitor.advance(state.step, loss, lr, rate)

        val_loss, stop = None, False
        if (eval_every and state.step % eval_every == 0) or state.step == total:
            monitor.phase("validation")
            val_loss = trainer.evaluate()
            stop = _record_eval(val_loss, state, config, monitor, trainer.eval_stats)
        improved = val_loss is not None and state.best_step == state.step
        if (save_every and state.step % save_every == 0) or state.step == total or stop or (improved and config.checkpoint.keep_best):
            monitor.phase("checkpoint")
            checkpoint.save(trainer.accelerator, run_dir, state.step, val_loss, config.checkpoint.keep_last, config.checkpoint.keep_best)
            last_saved = state.step
        if val_loss is not None or last_saved == state.step:
            speed.restart()
        monitor.phase("train")
        if stop:
            monitor.say(f"early stopping at step {state.step}: no improvement over {state.best_val:.4f} "
                        f"(step {state.best_step}) in {config.eval.patience} evaluations")
            break
    if config.checkpoint.final == "best" and (best := checkpoint.best(run_dir)) is not None:
        checkpoint.load(trainer.accelerator, best, strict=config.tuning == "full")
        monitor.say(f"RUN_DIR/final holds the best checkpoint, {best.name}")


def _record_eval(val_loss: float | None, state: TrainState, config: TrainConfig, monitor: Monitor,
                 stats: dict | None = None) -> bool:
    """Log an evaluation and update early stopping; True when the run should stop."""
    if val_loss is None:
        return False
    if config.method == "dpo":  # a preference loss has no perplexity; its rewards say more
        monitor.log({"step": state.step, "val_loss": val_loss, **{f"val_{k}": v for k, v in (stats or {}).items()}})
        monitor.say(f"step {state.step}: validation loss {val_loss:.4f}, reward accuracy "
                    f"{(stats or {}).get('reward_accuracy', float('nan')):.3f}")
    else:
        ppl = math.exp(min(val_loss, 50))
        monitor.log({"step": state.step, "val_loss": val_loss, "val_ppl": ppl})
        monitor.say(f"step {state.step}: validation loss {val_loss:.4f}, perplexity {ppl:.2f}")
    monitor.plot()
    improved = val_loss < state.best_val - config.eval.min_delta  # what early stopping counts
    if val_loss < state.best_val:  # the best checkpoint is simply the lowest loss
        state.best_val, state.best_step = val_loss, state.step
    state.stale_evals = 0 if improved else state.stale_evals + 1
    return bool(config.eval.patience) and state.stale_evals >= config.eval.patience


def _trainable(model, config: TrainConfig, seq2seq: bool):
    """The model ready to train: LoRA-wrapped when lora.r > 0, checkpointed when asked."""
    model.train()
    model.config.use_cache = False
    if config.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad, so it works under LoRA too.
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if config.tuning == "full":
        return model
    from peft import LoraConfig, TaskType, get_peft_model

    targets = config.lora.target_modules
    lora = LoraConfig(
        r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
        target_modules=("all-linear" if targets == ["all-linear"] else targets) or None,
        task_type=TaskType.SEQ_2_SEQ_LM if seq2seq else TaskType.CAUSAL_LM,
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as e:  # peft: target modules not found in the model
        raise ConfigError(f"lora.target_modules = {targets}: {str(e).splitlines()[0]}") from None


def _accelerator(config: TrainConfig):
    import torch
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device = 'cuda': no CUDA GPU is visible to PyTorch; use device=cpu or auto")
    cpu = config.device == "cpu" or not torch.cuda.is_available()  # cpu=True also selects gloo for CPU-only DDP
    run_dir = Path(config.out_dir).expanduser()
    return Accelerator(
        cpu=cpu,
        mixed_precision="bf16" if config.precision == "bf16" else "no",
        log_with=config.log.trackers or None,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
    )


def _keep_trainable_weights(models, weights, output_dir) -> None:
    """accelerate save hook for LoRA: checkpoint the adapter weights only, not the frozen base."""
    for model, state in zip(models, weights):
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        for key in [k for k in state if k not in trainable]:
            del state[key]


def _save_final(accelerator, model, loaded, template: str, config: TrainConfig, run_dir: Path, monitor: Monitor) -> Path:
    """RUN_DIR/final: a save_pretrained directory (full model or LoRA adapter) with tokenizer and template."""
    monitor.phase("final save")
    state_dict = accelerator.get_state_dict(model)  # every process: FSDP gathers the shards here
    final = run_dir / FINAL
    if accelerator.is_main_process:
        tmp = run_dir / f".tmp-{FINAL}"
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(str(tmp), state_dict=state_dict, safe_serialization=True)
        if config.tuning == "lora":
            _point_adapter_at_base(tmp, config.model)
        if config.method == "dpo":  # what `parley eval preference` measures the implicit reward against
            reference = config.dpo.reference or config.model
            path = Path(reference).expanduser()
            (tmp / dpo.PREFERENCE_FILE).write_text(json.dumps({
                "method": "dpo", "beta": config.dpo.beta, "loss": config.dpo.loss,
                "reference": str(path.resolve()) if path.exists() else reference,
                "adapters_off": config.tuning == "lora" and not config.dpo.reference}, indent=1) + "\n")
        tokenizer = loaded.tokenizer
        tokenizer.chat_template = template
        tokenizer.save_pretrained(str(tmp))
        replace_dir(tmp, final)
        monitor.say(f"saved {final}")
    accelerator.wait_for_everyone()
    return final


def _point_adapter_at_base(adapter_dir: Path, spec: str) -> None:
    """Name the base as the user did (`smollm2`, a hub id, or an absolute dir), so `parley chat` finds it."""
    path = Path(spec).expanduser()
    base = str(path.resolve()) if path.exists() else spec
    config_file = adapter_dir / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = base
    config_file.write_text(json.dumps(config, indent=2) + "\n")


def _say(accelerator, text: str) -> None:
    """A line for the user on stderr, from the main process only."""
    if accelerator.is_main_process:
        import sys

        print(text, file=sys.stderr, flush=True)


def _flat(table: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out
