"""Parley: make your own conversational and coding assistant.

Data flows one way: data -> tokenize -> train -> checkpoint -> models.load -> Engine ->
chat / serve / eval. See shared/DESIGN.md for the map.
"""

__version__ = "0.1.0"
