"""Explanations of a reply: how sure the model was of each token and what it nearly said (confidence.py),
used by every front end; the numbers come from the engine's own stream of tokens."""
