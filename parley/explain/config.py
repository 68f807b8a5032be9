"""What an explanation computes: the typed config shared by `parley explain`, `parley eval explain`,
the server's POST /v1/explain and the terminal's /why. Light (no torch), so the CLI can read its
defaults without loading the library."""

from __future__ import annotations

from dataclasses import dataclass

from parley.errors import ConfigError

METHODS = ("gradient_x_input", "integrated_gradients", "occlusion")
SHORT = {"gxi": "gradient_x_input", "ig": "integrated_gradients", "occlusion": "occlusion"}
MAX_STEPS = 1024


def method_names(text: str) -> tuple[str, ...]:
    """'gxi,ig' -> ('gradient_x_input', 'integrated_gradients'), checked (ExplainConfig does)."""
    return tuple(m.strip() for m in text.split(",") if m.strip())


@dataclass
class ExplainConfig:
    """What to compute; defaults are the cheap methods over the whole reply."""

    methods: tuple[str, ...] = ("gradient_x_input", "occlusion")  # any of METHODS (or gxi, ig)
    steps: int = 64  # integrated gradients: interpolation points (Gauss-Legendre)
    span: tuple[int, int] | None = None  # reply tokens [first, end) to explain; None: the whole reply
    rows: bool = True  # also the matrix: one row per reply token of the span
    top: int = 5  # alternatives kept per reply token
    ig_batch: int = 16  # integrated gradients: interpolation points per forward (bounds memory)

    def __post_init__(self) -> None:
        self.methods = tuple(dict.fromkeys(SHORT.get(m, m) for m in self.methods))
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ConfigError(f"--method {unknown[0] if unknown else ''!r} is not one of "
                              f"{', '.join(METHODS)} (or gxi, ig)")
        if not 1 <= self.steps <= MAX_STEPS:
            raise ConfigError(f"--steps must be 1 to {MAX_STEPS}, got {self.steps}")
