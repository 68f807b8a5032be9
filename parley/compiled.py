"""Decode steps compiled by inductor ahead of time, in a background process, loaded when ready.

    engine = LocalEngine(loaded, compile=True)     # the default of chat, serve and eval (`--no-compile`)

Why: a profile of the eager int8 decode step of the embedded model (README, Speed) spends ~40% of it
in the int8 GEMVs and the rest in Python and in ~1,300 small operator calls (norms, rotary
embeddings, attention, residual adds); inductor fuses the small ones into a few C++ loops and calls
the GEMVs directly: ~1.5x the eager step.

How: one graph, for one row decoding in a cache of one row (a chat, one API client), dynamic in the
columns allocated in the RowCache and in the columns attended over (the live width, so attention
costs what the context does). It is built with torch's ahead-of-time compile
(`torch.compile(...).aot_compile`: dynamo's graph and inductor's code, saved to a file) by a child
process at the lowest CPU priority (`nice 19`): compiling holds the GIL and both cores for a minute
or two, and inside the serving process it starved the decoding it ran beside (a first answer took
63 s instead of 1.7). Meanwhile the engine decodes eagerly. The child compiles a skeleton of the
model, its modules with empty weights, since the graph takes the weights as inputs: so any model the
engine holds (adapters, int8, tiny test models) compiles the same way. The graph is stored under
`$PARLEY_HOME/compiled/KEY` (KEY: the model's structure and dtypes, the settings, the versions of
torch and transformers, and the code traced), where later starts find it: loading takes a few
seconds instead of a compile. Before use, the loaded graph is checked once against an eager step
at a width other than the traced one.

Where it does not pay, steps run eagerly: batches of several rows (several clients, evaluation) and
contexts wider than MAX_WIDTH. When a batch is down to one row, that row moves to a cache of its own
(`Batch.remove`) and decodes compiled: the tail of an evaluation, the last client streaming.
Inductor's fused attention (matmul-softmax-matmul) grows with the width faster than eager's SDPA kernel: measured on the embedded model, one row at 300/600/1,000
columns 14.1/16.6/23.5 ms a step compiled against 23.9/24.0/27.6 eager, but eight rows at 600
columns 85.5 against 64.3, and a compiled batch graph made HumanEval slower (367 s against 277).
SDPA's own kernel inside the graph was slower still (121 ms at 8 x 600).

Guards: the graph runs without dynamo's guards (full guard checks cost ~1 ms a step); that is safe
because `covers` admits only what it was built for: one new token in a cache of one row, the cache
already allocated for every position written (the eager path grows it).

Numerics: the fused graph rounds differently from eager in bf16, so greedy tokens can differ from
the eager ones after a few tokens; the logits stay within a tested tolerance (tests/test_compiled.py),
and quality is measured on the compiled path (README, Speed).
"""

from __future__ import annotations

import atexit
import copy
import hashlib
import inspect
import itertools
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import torch
from torch import nn

from parley.config import parley_home
from parley.files import atomic_dir
from parley.kvcache import RowCache

log = logging.getLogger("parley.compiled")

FORMAT = 1  # bump when what is saved changes shape
GRAPH_FILE = "step.bin"
TRACED_WIDTH, CHECK_WIDTH = 5, 13  # the live width traced, and another one checked against eager before use
MAX_WIDTH = 1024  # wider contexts decode eagerly (see the module docstring)
CHECK_TOP, CHECK_TOLERANCE = 10, 1.0  # max |log p(compiled) - log p(eager)| over eager's 10 likeliest tokens:
# bf16 rounding stays well under it (the far tail of 49,152 tokens may not), a wrong graph does not
TRACED = ("kvcache.py", "quant.py")  # Parley's modules traced into the graph (and `step`): part of the key
NICE = 19  # the child's CPU priority: the lowest, so that decoding beside it keeps the cores


def wanted() -> bool:
    """Whether chat, serve and eval compile when not told: yes, unless PARLEY_COMPILE=0 (the test suite
    pins it: short-lived engines would each start a compile)."""
    return os.environ.get("PARLEY_COMPILE", "1") != "0"


def cache_dir() -> Path:
    """Where compiled graphs and inductor's kernels are kept: beside Parley's other caches."""
    return parley_home() / "compiled"


class CompiledStep:
    """The compiled decode step of one model; `ready` once it is built (or found) and loaded."""

    def __init__(self, model, dtype: torch.dtype, window: int, keeps_logits: bool):
        self.model, self.dtype, self.window, self.keeps_logits = model, dtype, window, keeps_logits
        self.steps = 0  # steps run compiled (tests and /metrics read it)
        self.error: BaseException | None = None  # why the compile failed, if it did
        self._graph = None  # the loaded graph (torch's AOTCompiledFunction)
        self._ready = threading.Event()
        # Inductor's compiled kernels, which a saved graph loads; the child inherits the setting. Set, not
        # defaulted: torch sets the variable itself (to a folder in /tmp) the first time it asks for it.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir() / "inductor")
        threading.Thread(target=self._build, name="parley-compile", daemon=True).start()

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self.error is None

    @property
    def building(self) -> bool:
        """Still compiling or loading (a failed compile is done: decoding stays eager)."""
        return not self._ready.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the graph is loaded or failed (tests, benchmarks); True when it is usable."""
        self._ready.wait(timeout)
        return self.ready

    def covers(self, cache: RowCache, first: int, ids: torch.Tensor, positions: torch.Tensor) -> bool:
        """Whether this forward can run compiled (see the module docstring)."""
        layer = cache.layers[0] if cache.layers else None
        if not self.ready or first != 0 or ids.shape[1] != 1 or layer is None or layer.keys is None:
            return False
        rows, columns = layer.keys.shape[0], layer.keys.shape[2]
        batch = ids.shape[0]
        # The live width (furthest position + 1) stays below the allocated columns: the graph was traced
        # with fewer, and a full-width slice is a differently laid-out tensor.
        return batch == 1 and rows == 1 and int(positions.max()) + 1 < min(columns, MAX_WIDTH + 1)

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, cache: RowCache, window: int | None) -> torch.Tensor:
        """(B, 1) ids at (B, 1) positions -> (B, 1, V) logits, through the compiled graph."""
        cache.plan(0, positions)
        logits = self._graph(self.model, ids, positions, cache.mask(self.dtype, window), cache, self.keeps_logits)
        self.steps += 1
        return logits

    def key(self) -> str:
        """What the graph depends on: the model's structure and dtypes, the settings, the code traced."""
        h = hashlib.sha256(f"{FORMAT} {torch.__version__} {_transformers_version()} {self.dtype} "
                           f"{self.window} {self.keeps_logits} {torch.backends.cpu.get_cpu_capability()}".encode())
        h.update(repr(self.model).encode())
        config = getattr(self.model, "config", None)
        h.update((config.to_json_string() if hasattr(config, "to_json_string") else "").encode())
        for name, t in itertools.chain(self.model.named_parameters(remove_duplicate=False),
                                       self.model.named_buffers(remove_duplicate=False)):
            h.update(f"{name} {tuple(t.shape)} {t.dtype} {t.requires_grad}".encode())
        h.update(inspect.getsource(step).encode())
        for name in TRACED:
            h.update((Path(__file__).parent / name).read_bytes())
        return h.hexdigest()[:24]

    def _build(self) -> None:
        try:
            folder = cache_dir() / self.key()
            if not (folder / GRAPH_FILE).is_file():
                _compile_in_child(self.model, folder, self.dtype, self.window, self.keeps_logits)
            with open(folder / GRAPH_FILE, "rb") as f:
                graph = torch.compiler.load_compiled_function(f)
            graph.disable_guard_check()  # `covers` keeps to the shapes it was traced for
            with torch.inference_mode():
                self._check(graph)
            self._graph = graph
            log.info("compiled decode steps ready (%s)", folder)
        except Exception as e:  # the eager path goes on serving; say why once
            self.error = e
            log.warning("compiled decode steps unavailable, decoding stays eager: %s", str(e).splitlines()[0])
        finally:
            self._ready.set()

    def _check(self, graph) -> None:
        """Run `graph` once at a width other than the traced one, against the same step run eagerly."""
        results = []
        for run in (graph, step):
            cache, ids, positions, mask = _example(self.model, self.dtype, self.window, self.keeps_logits, CHECK_WIDTH)
            results.append(torch.log_softmax(run(self.model, ids, positions, mask, cache, self.keeps_logits).float(), -1))
        top = results[1].topk(CHECK_TOP, dim=-1).indices
        gap = (results[0].gather(-1, top) - results[1].gather(-1, top)).abs().max().item()
        if not gap <= CHECK_TOLERANCE:  # NaN included
            raise RuntimeError(f"the compiled graph disagrees with the eager step (max log-prob gap {gap:.3g})")


def step(model, ids, positions, mask, cache, keeps_logits: bool):
    """One forward of one token per row; what the graph is traced from."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cache._width = mask.shape[-1]  # symbolic in the graph: attention spans the live columns only
    extra = {"logits_to_keep": 1} if keeps_logits else {}
    # Attention as plain matmul-softmax-matmul, which inductor fuses; the flash kernel costs more for one query.
    with sdpa_kernel(SDPBackend.MATH):
        out = model(input_ids=ids, position_ids=positions, attention_mask=mask, cache=cache, use_cache=True, **extra)
    return out.logits[:, -1:]


def _example(model, dtype, window, keeps_logits, width):
    """(cache, ids, positions, mask) for one step of one row at live width `width`, in a cache of one
    row first prefilled with one token, eagerly (so that its tensors exist)."""
    cache = RowCache(window)
    ids, positions = torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long)
    cache.plan(0, positions)
    step(model, ids, positions, cache.mask(dtype), cache, keeps_logits)
    positions = torch.full((1, 1), width - 1)
    cache.plan(0, positions)
    return cache, ids, positions, cache.mask(dtype)


def _compile_in_child(model, folder: Path, dtype: torch.dtype, window: int, keeps_logits: bool) -> None:
    """Write the graph into `folder` from a child process at the lowest priority; raise if it fails."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    skeleton = folder.parent / f"{folder.name}.{os.getpid()}.skeleton.pt"  # per process: two may start at once
    torch.save(_skeleton(model), skeleton)
    log_path = folder.parent / f"{folder.name}.log"
    args = [sys.executable, "-m", "parley.compiled", str(skeleton), str(folder), str(dtype).removeprefix("torch."),
            str(window), str(int(keeps_logits)), str(NICE)]
    nice = shutil.which("nice")  # from the start, torch's import included (the child renices itself otherwise)
    with open(log_path, "wb") as out:
        child = subprocess.Popen([nice, "-n", str(NICE), *args] if nice else args, stdout=out,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    atexit.register(_stop, child)  # a compile left running would hold both cores after Parley exits
    code = child.wait()
    skeleton.unlink(missing_ok=True)
    if code != 0 or not (folder / GRAPH_FILE).is_file():
        lines = log_path.read_text(errors="replace").strip().splitlines() or [f"exit code {code}"]
        raise RuntimeError(f"the compile ({log_path}) failed: {lines[-1]}")


def _stop(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.terminate()


def _skeleton(model: nn.Module) -> nn.Module:
    """A copy of `model` whose weights are on the meta device (no data): its structure, for the child.
    Tensors shared between modules (tied embeddings, kept bf16 weights) stay shared."""
    return _with_tensors(model, lambda t: t.detach().to("meta"))


def _with_tensors(model: nn.Module, make) -> nn.Module:
    """A deep copy of `model` with each parameter and buffer replaced by `make(it)`, shared ones once
    (deepcopy's memo maps every original tensor to its replacement)."""
    memo = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        new = make(t)
        memo[id(t)] = nn.Parameter(new, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else new
    return copy.deepcopy(model, memo)


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _build_graphs(skeleton_path: str, folder: str, dtype: str, window: str, keeps_logits: str) -> None:
    """The child's work: trace and compile the graph on the skeleton and save it into `folder`."""
    import fcntl

    target = Path(folder)
    # One compile per key at a time (two servers starting together); the second finds the first's result.
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / GRAPH_FILE).is_file():
            return
        skeleton = torch.load(skeleton_path, weights_only=False)
        Path(skeleton_path).unlink(missing_ok=True)  # here too: a parent killed while we compile cannot do it
        model = _with_tensors(skeleton, lambda t: torch.empty_like(t, device="cpu"))
        dtype_, window_, keeps = getattr(torch, dtype), int(window), keeps_logits == "1"
        # Everything is an input (no guard is kept: `covers` decides), so nothing in the graph refers to
        # this process's objects by identity.
        compiler = torch.compile(step, fullgraph=True, dynamic=False,
                                 options={"guard_filter_fn": lambda guards: [False] * len(guards)})
        with atomic_dir(target) as tmp, torch.inference_mode():
            cache, ids, positions, mask = _example(model, dtype_, window_, keeps, TRACED_WIDTH)
            _mark(mask, cache)
            graph = compiler.aot_compile(((model, ids, positions, mask, cache, keeps), {}))
            graph.save_compiled_function(str(Path(tmp) / GRAPH_FILE))


def _mark(mask: torch.Tensor, cache: RowCache) -> None:
    """Tell dynamo which sizes vary between steps (the live width, the cache's columns), so that one
    graph serves them all; the other sizes are the model's own or 1."""
    mark = torch._dynamo.maybe_mark_dynamic
    mark(mask, 3)
    for layer in cache.layers:
        for tensor in (layer.keys, layer.values):
            mark(tensor, 2)


if __name__ == "__main__":  # python -m parley.compiled SKELETON FOLDER DTYPE WINDOW KEEPS_LOGITS NICE
    *arguments, niceness = sys.argv[1:]
    os.nice(max(0, int(niceness) - os.nice(0)))  # whether or not `nice` started it
    _build_graphs(*arguments)
