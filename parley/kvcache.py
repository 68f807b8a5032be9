"""Key/value memory for the engine: a batch cache where every row sits at its own length, and a store of
finished prefixes that later requests resume from.

`RowCache` is a transformers `Cache`: the model's attention layers call `update()` with the keys and
values of the tokens being fed, and get back what they attend over. Tensors are preallocated as
(rows, kv_heads, capacity, head_dim) per layer and grow by doubling, so a decode step writes one
column per row in place instead of concatenating the whole cache (transformers' DynamicCache), and
a row that joins or leaves costs one row copy, not a re-pad of the batch. Before each forward the
caller sets `plan(first_row, positions)`: the model is fed rows `first_row ...` and the keys of query
(b, i) land at `positions[b, i]`. The attention mask is built from the same positions (`mask()`), so
rows never see each other's padding.

`PrefixStore` keeps the keys and values of recently finished sequences (prompt and reply) up to a
memory budget. A new prompt that starts with a stored one (the next turn of a chat, an API client
resending the whole history, the same system prompt) copies that part instead of recomputing it:
the rule vLLM calls automatic prefix caching. Reuse is exact: a cached prefix gives the same logits
as a fresh prefill, within float rounding (tests/test_kvcache.py).

Limits: every layer is treated as full attention over the row's own past, plus an optional sliding
window applied in the mask (models with other cache kinds, e.g. state-space layers, are refused).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

FIRST_CAPACITY = 128  # token columns allocated on first use; doubled when a row outgrows them


class _RowLayer(CacheLayerMixin):
    """One attention layer's keys and values for every row; filled by `RowCache.update`."""

    is_sliding = False
    is_compileable = False

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):  # RowCache.update writes instead
        raise NotImplementedError

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.keys.shape[2], 0

    def get_seq_length(self) -> int:
        return 0

    def get_max_length(self) -> int:
        return -1


class RowCache(Cache):
    """Preallocated keys and values for a batch whose rows have different lengths; see the module docstring."""

    def __init__(self, limit: int, first_capacity: int | None = None):
        super().__init__(layer_class_to_replicate=_RowLayer)
        self.limit = limit  # the model's context window: capacity never grows past it
        self.first_capacity = first_capacity or FIRST_CAPACITY  # columns allocated on first use
        self.rows = 0  # rows in use (the batch size)
        self._first, self._positions = 0, None  # the current forward's plan

    def plan(self, first_row: int, positions: torch.Tensor, width: int | None = None) -> None:
        """The next forward feeds rows first_row.. with query (b, i) at `positions[b, i]`, a (B, q) tensor,
        and attends over `width` columns (default: just enough for the furthest position)."""
        self._first, self._positions = first_row, positions
        self._width = width or min(int(positions.max()) + 1, self.limit)

    def mask(self, dtype, window: int | None = None) -> torch.Tensor:
        """The additive (B, 1, q, width) mask of the planned forward: each query sees its own row's past."""
        columns = torch.arange(self._width, device=self._positions.device)
        allowed = columns <= self._positions[..., None]  # (B, q, width)
        if window:
            allowed &= columns > self._positions[..., None] - window
        zero = torch.zeros((), dtype=dtype, device=self._positions.device)
        return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        """Write the fed tokens' keys/values (B, heads, q, dim) at their positions; return the rows' whole past."""
        while len(self.layers) <= layer_idx:
            self.layers.append(_RowLayer())
        layer = self.layers[layer_idx]
        first, count = self._first, key_states.shape[0]
        _reserve(layer, key_states[0, :, 0], value_states[0, :, 0], first + count, self._width, self)
        rows = torch.arange(first, first + count, device=key_states.device)[:, None]  # (B, 1)
        # Advanced indices on dims 0 and 2 put (B, q) first: the values go in as (B, q, heads, dim).
        layer.keys[rows, :, self._positions] = key_states.transpose(1, 2)
        layer.values[rows, :, self._positions] = value_states.transpose(1, 2)
        return layer.keys[first : first + count, :, : self._width], layer.values[first : first + count, :, : self._width]

    def move_row(self, source: int, target: int) -> None:
        """Copy row `source` over row `target` (compacting the batch when a row leaves)."""
        for layer in self.layers:
            layer.keys[target] = layer.keys[source]
            layer.values[target] = layer.values[source]

    def snapshot(self, row: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Copies of one row's first `length` positions, per layer: (heads, length, dim) keys and values."""
        return [(layer.keys[row, :, :length].clone(), layer.values[row, :, :length].clone()) for layer in self.layers]

    def restore(self, row: int, saved: list[tuple[torch.Tensor, torch.Tensor]], length: int) -> None:
        """Put the first `length` positions of a snapshot into `row`, making room for the row as needed."""
        while len(self.layers) < len(saved):
            self.layers.append(_RowLayer())
        for layer, (keys, values) in zip(self.layers, saved):
            _reserve(layer, keys[:, 0], values[:, 0], row + 1, length, self)
            layer.keys[row, :, :length] = keys[:, :length]
            layer.values[row, :, :length] = values[:, :length]

    def alone(self, row: int, length: int) -> RowCache:
        """A new cache holding only `row`'s first `length` positions, as its row 0."""
        cache = RowCache(self.limit, self.first_capacity)
        cache.restore(0, self.snapshot(row, length), length)
        return cache

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # positions are always given explicitly, per row

    @property
    def is_compileable(self) -> bool:
        return False


def _reserve(layer: _RowLayer, key: torch.Tensor, value: torch.Tensor, rows: int, width: int, cache: RowCache) -> None:
    """Grow `layer` to at least `rows` x `width` (doubling); `key`/`value` are (heads, dim) samples of the kind."""
    have = layer.keys
    if have is not None and have.shape[0] >= rows and have.shape[2] >= width:
        return
    old_rows, old_width = (0, 0) if have is None else (have.shape[0], have.shape[2])
    new_rows = old_rows if rows <= old_rows else max(rows, 2 * old_rows)
    new_width = old_width or cache.first_capacity
    while new_width < width:
        new_width *= 2
    new_width = max(min(new_width, cache.limit), old_width)
    for name, like in (("keys", key), ("values", value)):
        grown = like.new_zeros((new_rows, like.shape[0], new_width, like.shape[1]))
        if have is not None:
            old = getattr(layer, name)
            grown[: old.shape[0], :, : old.shape[2]] = old
        setattr(layer, name, grown)
    layer.is_initialized = True


class PrefixStore:
    """Keys and values of finished sequences, most recently used last, within a byte budget."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self._entries: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self._bytes = 0
        self.hits = self.reused_tokens = 0  # counters for /metrics and tests

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, ids: list[int], saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep `saved` (a RowCache.snapshot) for the token ids it holds; drop stored prefixes of it."""
        key = tuple(ids)
        size = _size(saved)
        if not key or size > self.budget:
            return
        for other in [o for o in self._entries if len(o) <= len(key) and key[: len(o)] == o]:
            self._drop(other)  # the new entry covers it
        self._entries[key] = saved
        self._bytes += size
        while self._bytes > self.budget:
            self._drop(next(iter(self._entries)))

    def longest(self, ids: list[int]) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]] | None]:
        """The longest stored prefix of `ids`, leaving at least one token to feed: (length, snapshot)."""
        best, found = 0, None
        limit = len(ids) - 1  # the last prompt token must be fed to get the next token's logits
        for key in self._entries:
            n = _common(key, ids, limit)
            if n > best:
                best, found = n, key
        if found is None:
            return 0, None
        self._entries.move_to_end(found)
        self.hits += 1
        self.reused_tokens += best
        return best, self._entries[found]

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _drop(self, key: tuple[int, ...]) -> None:
        self._bytes -= _size(self._entries.pop(key))


def _size(saved: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in saved)


def _common(a: tuple[int, ...], b: list[int], limit: int) -> int:
    n = 0
    for x, y in zip(a, b[:limit]):
        if x != y:
            break
        n += 1
    return n
