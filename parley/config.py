"""Where Parley keeps its files, and the typed config shared by the front ends.

$PARLEY_HOME (default ~/.cache/parley) holds the model cache (models/) and the conversation
database (parley.db).
"""

from __future__ import annotations

import os
from pathlib import Path


def parley_home() -> Path:
    """The directory for caches and the conversation store; not created here."""
    return Path(os.environ.get("PARLEY_HOME") or Path.home() / ".cache" / "parley").expanduser()
