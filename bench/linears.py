"""The model's linear layers at the row counts that decoding sees, in each kernel Parley can call.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/linears.py [--model smollm2] [--rows 1,2,4,8,16,64] [--threads 1]

Loads the model in int8 (parley/quant.py), then for each row count times one pass over every linear
layer (the embedded model has 211, output head included), with random bf16 activations, three ways:

- `bf16`: `F.linear` on the bf16 weights (the baseline: what a bf16 model runs);
- `int8`: `torch._weight_int8pack_mm`, the int8 GEMV of quant.py;
- `packed`: `torch.ops.mkldnn._linear_pointwise` on the bf16 weights in oneDNN's packed layout;
- `w8a8`: oneDNN's int8 x int8 kernel (`torch.ops.onednn.qlinear_pointwise`, VNNI where the CPU has
  it) on the same int8 weights, prepacked, with activations quantized to uint8 beforehand (not timed):
  the floor of quantizing activations too, a lossy route Parley does not take (README, Speed).

Each pass reads every weight once, as a decode step does, so caches hold little between layers.
Prints JSON: ms per pass (median of --repeats), and per kernel its ratio over `bf16` (below 1 is faster).
quant.GEMV_ROWS is chosen from these figures; rerun this on a new machine to check it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--rows", default="1,2,4,8,16,64")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from parley import models
    from parley.quant import Int8Linear

    layers = [m for m in models.load(args.model, dtype="int8").model.modules() if isinstance(m, Int8Linear)]
    if any(layer.packed.tensor is None for layer in layers):
        raise SystemExit("oneDNN has no bf16 kernel on this CPU: nothing to compare the packed layout with")
    weights = [layer.weight.detach() for layer in layers]
    results = {}
    with torch.inference_mode():
        for rows in [int(r) for r in args.rows.split(",")]:
            inputs = {width: torch.randn(rows, width, dtype=torch.bfloat16) for width in {w.shape[1] for w in weights}}
            scale = float(max(x.abs().max() for x in inputs.values())) / 127
            quantized = {w: (x.float() / scale).round().clamp(-127, 127).add(128).to(torch.uint8) for w, x in inputs.items()}
            prepacked = [torch.ops.onednn.qlinear_prepack(m.qweight, [rows, m.in_features]) for m in layers]
            zero = {m.out_features: torch.zeros(m.out_features, dtype=torch.int64) for m in layers}
            kernels = {
                "bf16": lambda: [torch.nn.functional.linear(inputs[w.shape[1]], w) for w in weights],
                "int8": lambda: [torch._weight_int8pack_mm(inputs[m.in_features], m.qweight, m.scale) for m in layers],
                "packed": lambda: [torch.ops.mkldnn._linear_pointwise(inputs[m.in_features], m.packed.tensor, None,
                                                                      "none", [], "") for m in layers],
                "w8a8": lambda: [torch.ops.onednn.qlinear_pointwise(quantized[m.in_features], scale, 128, w, m.scale.float(),
                                                                    zero[m.out_features], None, 1.0, 0, torch.bfloat16,
                                                                    "none", [], "") for m, w in zip(layers, prepacked)],
            }
            ms = {name: _median_ms(run, args.repeats) for name, run in kernels.items()}
            results[str(rows)] = {"ms": ms, "over_bf16": {k: round(v / ms["bf16"], 2) for k, v in ms.items()}}
    print(json.dumps({"bench": "linears", "model": args.model, "layers": len(layers), "threads": args.threads,
                      "cpus": os.cpu_count(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                      "baseline": "bf16 (F.linear)", "rows": results}, indent=2))


def _median_ms(run, repeats: int) -> float:
    run()  # warm-up: oneDNN builds its primitives on the first call
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 2)


if __name__ == "__main__":
    main()
