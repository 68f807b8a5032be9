"""Fine-tuning: `parley train` and `parley export`.

    config.py      TrainConfig: typed keys with notes, TOML + --set, validation before anything loads
    dataset.py     prepared dirs and raw sources (prepared into RUN_DIR/data), tokenizer/template checks
    batches.py     which rows make each step on which process (the data position is the step), collation
    loop.py        the accelerate loop: full or LoRA, causal or seq2seq, eval, early stopping, checkpoints
    steps.py       one optimizer step and one evaluation: the loss, NaN and OOM stops
    dpo.py         preference tuning (method = "dpo"): DPO / hinge / IPO losses, the reference model, rewards
    checkpoint.py  atomic checkpoints, keep last N + best, resume
    monitor.py     progress bar, metrics.jsonl, loss.png, trackers
    export.py      merge a LoRA adapter into standalone weights
"""
