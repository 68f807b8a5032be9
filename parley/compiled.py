"""Decode steps compiled by inductor: one token for each row of a batch, on CPU, in the background.

    engine = LocalEngine(loaded, compile=True)     # `parley chat --compile`, `parley serve --compile`

Why: a profile of the eager int8 decode step of the embedded model (README, Speed) spends ~40% of it
in the int8 GEMVs and the rest in Python and in ~1,300 small operator calls (norms, rotary
embeddings, attention, residual adds); inductor fuses the small ones into a few C++ loops and calls
the GEMVs directly: ~1.5x the eager step. For fp32 weights the GEMVs themselves are the cost, and
inductor's C++ GEMM template on frozen weights streams them ~2x faster than aten's.

How: one graph per shape family, dynamic in the batch size, the rows and columns allocated in the
RowCache, and the columns attended over (the live width, so attention costs what the context does):
    batch 1 in a cache of 1 row (chat, one client)  and  batch >= 2 (several clients, evaluation).
A background thread compiles both on dummy inputs while the engine keeps decoding eagerly (slowly:
the compile holds the GIL and both cores; ~65 s on 2 cores even from a warm cache, which is why it
is opt-in); from then on `Batch` hands over every step it `covers`. Anything else (prefill, a lone
row left in a wider cache) runs eagerly. With bf16 or int8 weights the graphs are read back from inductor's disk cache
(`$PARLEY_HOME/inductor`) on later starts, which saves inductor's code generation but not dynamo's tracing.
With fp32 weights they are frozen into the C++ GEMM, which inductor cannot cache: ~2 min every start.
Attention runs as plain matmul-softmax-matmul inside the graph (SDPA's math backend), which inductor
fuses; its flash kernel costs more for one query.

Guards: once both graphs exist, only the guards that tell them apart are evaluated (torch's
`skip_guard_eval_unsafe`; full guard checks cost ~1 ms a step). That is safe because `covers`
admits only what the graphs were built for: one new token per row, rows starting at 0, the cache
already allocated for every position written (the eager path grows it).

Numerics: the fused graph rounds differently from eager in bf16, so greedy tokens can differ from
the eager ones after a few tokens; the logits stay within a tested tolerance (tests/test_compiled.py),
and quality is measured on the compiled path (README, Speed).
"""

from __future__ import annotations

import logging
import os
import threading

import torch

from parley.config import parley_home
from parley.kvcache import RowCache

log = logging.getLogger("parley.compiled")


def wanted() -> bool:
    """Whether chat, serve and eval compile when not told: only with PARLEY_COMPILE=1. Off by default
    because the compile starves the decoding it runs beside: on 2 cores a first answer given while it
    runs took 63 s instead of 1.7 (README, Speed). The test suite pins PARLEY_COMPILE=0."""
    return os.environ.get("PARLEY_COMPILE", "0") == "1"


def cache_dir() -> str:
    """Where inductor keeps compiled graphs: beside Parley's other caches, so they outlive /tmp."""
    return str(parley_home() / "inductor")


class CompiledStep:
    """The compiled decode steps of one model; `ready` once the background compile has finished."""

    def __init__(self, model, dtype: torch.dtype, window: int, keeps_logits: bool):
        self.model, self.dtype, self.window = model, dtype, window
        self.frozen = dtype == torch.float32  # fp32: freeze the weights into the C++ GEMM (see the docstring)
        self.extra = {"logits_to_keep": 1} if keeps_logits else {}
        self.steps = 0  # steps run compiled (tests and /metrics read it)
        self.error: BaseException | None = None  # why the compile failed, if it did
        self._ready = threading.Event()
        mode = "max-autotune-no-cudagraphs" if self.frozen else None
        self._fn = torch.compile(self._step, mode=mode, dynamic=False)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", cache_dir())
        threading.Thread(target=self._build, name="parley-compile", daemon=True).start()

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self.error is None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the compile is done (tests, benchmarks); True when it succeeded."""
        self._ready.wait(timeout)
        return self.ready

    def covers(self, cache: RowCache, first: int, ids: torch.Tensor, positions: torch.Tensor) -> bool:
        """Whether this forward can run compiled (see the module docstring)."""
        layer = cache.layers[0] if cache.layers else None
        if not self.ready or first != 0 or ids.shape[1] != 1 or layer is None or layer.keys is None:
            return False
        rows, columns = layer.keys.shape[0], layer.keys.shape[2]
        batch = ids.shape[0]
        # The live width (furthest position + 1) stays below the allocated columns: the graphs were traced
        # with fewer, and a full-width slice is a differently laid-out tensor (a guard dynamo keeps).
        return (rows == 1 if batch == 1 else rows >= batch) and int(positions.max()) + 1 < columns

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, cache: RowCache, window: int | None) -> torch.Tensor:
        """(B, 1) ids at (B, 1) positions -> (B, 1, V) logits, through the compiled graph."""
        cache.plan(0, positions)
        mask = cache.mask(self.dtype, window)
        _mark(ids, positions, mask, cache)
        # eager_on_recompile as well: should a step ever need a new graph after all, it runs eagerly rather
        # than waiting for a compile.
        with torch.compiler.set_stance("eager_on_recompile", skip_guard_eval_unsafe=True):
            logits = self._fn(ids, positions, mask, cache)
        self.steps += 1
        return logits

    def _step(self, ids, positions, mask, cache):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        cache._width = mask.shape[-1]  # symbolic in the graph: attention spans the live columns only
        with sdpa_kernel(SDPBackend.MATH):
            out = self.model(input_ids=ids, position_ids=positions, attention_mask=mask, cache=cache,
                             use_cache=True, **self.extra)
        return out.logits[:, -1:]

    def _build(self) -> None:
        import torch._inductor.config as inductor

        try:
            settings = dict(freezing=True, max_autotune_gemm_backends="CPP") if self.frozen else {}
            with torch.inference_mode(), inductor.patch(**settings), torch.compiler.set_stance("default"):
                # The two graphs, traced on sizes that all differ (batch, cache rows, live columns), so that
                # dynamo does not take equal sizes for one symbol (its "duck sizing") and tie them together.
                for batch, rows, width in ((1, 1, 5), (2, 4, 7)):
                    cache = RowCache(self.window)
                    positions = torch.arange(rows)[:, None]
                    cache.plan(0, positions)
                    self._step(torch.zeros(rows, 1, dtype=torch.long), positions, cache.mask(self.dtype), cache)
                    positions = torch.arange(width - batch, width)[:, None]
                    cache.plan(0, positions)
                    ids, mask = torch.zeros(batch, 1, dtype=torch.long), cache.mask(self.dtype)
                    _mark(ids, positions, mask, cache)
                    self._fn(ids, positions, mask, cache)
            log.info("compiled decode steps ready")
        except Exception as e:  # the eager path goes on serving; say why once
            self.error = e
            log.warning("compiling the decode step failed, decoding stays eager: %s", str(e).splitlines()[0])
        finally:
            self._ready.set()


def _mark(ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: RowCache) -> None:
    """Tell dynamo which sizes vary between steps, so one graph serves them all (size 1 stays static)."""
    mark = torch._dynamo.maybe_mark_dynamic
    for tensor in (ids, positions, mask):
        mark(tensor, 0)
    mark(mask, 3)
    for layer in cache.layers:
        for tensor in (layer.keys, layer.values):
            mark(tensor, 0)
            mark(tensor, 2)
