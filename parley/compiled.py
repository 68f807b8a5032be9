"""One-token decode steps of a batch of one, compiled by inductor: ~2.3x the eager step on CPU, the same tokens.

    engine = LocalEngine(loaded, compile=True)     # `parley chat --compile`, `parley serve --compile`

Why: a profile of the eager decode step puts ~80% of it in `aten::mm`, whose one-row GEMV reads the
weights at ~12 GB/s where this class of machine streams ~50 GB/s. Inductor's C++ GEMM template,
given the weights as frozen constants, reaches that (bench/compile.py measures both).

How: a background thread compiles the step once, on a dummy RowCache of CAPACITY columns, while the
engine keeps decoding eagerly; from then on `Batch` hands it every step it `covers`: one row, one
token, a cache allocated at exactly CAPACITY columns (LocalEngine allocates that when compiling).
Any other call (prefill, several rows, a row past CAPACITY) runs eagerly, and a call whose shapes
would need a new compile runs eagerly too (dynamo's "eager_on_recompile" stance): the decode loop
never waits for a compile.

Limits: CPU only. The compile takes ~1.5-2 minutes on 2 cores, shares them with decoding meanwhile,
and is redone at every start (inductor does not reuse graphs whose weights are frozen constants).
The compiled step attends over all CAPACITY columns, padding included (masked).
"""

from __future__ import annotations

import logging
import threading

import torch

from parley.kvcache import RowCache

CAPACITY = 1024  # KV columns of a compiled batch-of-one cache: longer rows decode eagerly

log = logging.getLogger("parley.compiled")


class CompiledStep:
    """The compiled decode step of one model; `ready` once the background compile has finished."""

    def __init__(self, model, dtype: torch.dtype, window: int, keeps_logits: bool):
        self.model, self.dtype, self.window = model, dtype, window
        self.capacity = min(CAPACITY, window)
        self.extra = {"logits_to_keep": 1} if keeps_logits else {}
        self.steps = 0  # steps run compiled (tests and /metrics read it)
        self.error: BaseException | None = None  # why the compile failed, if it did
        self._ready = threading.Event()
        self._fn = torch.compile(self._step, mode="max-autotune-no-cudagraphs", dynamic=False)
        threading.Thread(target=self._build, name="parley-compile", daemon=True).start()

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self.error is None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the compile is done (tests, benchmarks); True when it succeeded."""
        self._ready.wait(timeout)
        return self.ready

    def covers(self, cache: RowCache, ids: torch.Tensor, positions: torch.Tensor) -> bool:
        """Whether this forward can run compiled (see the module docstring)."""
        layer = cache.layers[0] if cache.layers else None
        return (self.ready and ids.shape == (1, 1) and layer is not None and layer.keys is not None
                and layer.keys.shape[0] == 1 and layer.keys.shape[2] == self.capacity
                and int(positions) < self.capacity)  # the row's next column exists: past it, eager grows the cache

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, cache: RowCache, window: int | None) -> torch.Tensor:
        """(1, 1) ids at (1, 1) positions -> (1, 1, V) logits, through the compiled graph when it fits."""
        cache.plan(0, positions, width=self.capacity)
        with torch.compiler.set_stance("eager_on_recompile"):
            logits = self._fn(ids, positions, cache.mask(self.dtype, window), cache)
        self.steps += 1
        return logits

    def _step(self, ids, positions, mask, cache):
        out = self.model(input_ids=ids, position_ids=positions, attention_mask=mask, cache=cache, use_cache=True,
                         **self.extra)
        return out.logits[:, -1:]

    def _build(self) -> None:
        import torch._inductor.config as inductor

        try:
            with torch.inference_mode(), inductor.patch(freezing=True, max_autotune_gemm_backends="CPP"):
                cache = RowCache(self.window, first_capacity=self.capacity)
                positions = torch.zeros(1, 1, dtype=torch.long)
                cache.plan(0, positions, width=self.capacity)
                self._step(torch.zeros(1, 1, dtype=torch.long), positions, cache.mask(self.dtype), cache)  # allocate
                cache.plan(0, positions, width=self.capacity)
                self._fn(torch.zeros(1, 1, dtype=torch.long), positions, cache.mask(self.dtype), cache)
            log.info("compiled decode step ready")
        except Exception as e:  # the eager path goes on serving; say why once
            self.error = e
            log.warning("compiling the decode step failed, decoding stays eager: %s", str(e).splitlines()[0])
        finally:
            self._ready.set()
