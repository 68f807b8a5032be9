"""Parley: make your own conversational and coding assistant.

Data flows one way: data -> tokenize -> train -> checkpoint -> backend.open -> Engine ->
chat / serve / eval. See shared/DESIGN.md for the map.
"""

__version__ = "0.1.0"

import warnings

# peft (training, and loading a LoRA run) reads a transformers alias deprecated in v5: a FutureWarning
# on every adapter load that no user can act on.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
