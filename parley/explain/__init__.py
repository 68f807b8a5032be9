"""Explanations of a reply: how sure the model was of each token, what it nearly said, and which
prompt tokens, lines and messages drove it. Every front end (terminal, server, `parley explain`,
`parley eval explain`) uses this package; the numbers come from the engine's own weights and template.

    confidence.py   token probabilities, alternatives, entropy and their colour buckets (from the engine's stream)
    layout.py       the conversation and reply as the model reads them: tokens, messages, lines
    attribution.py  gradient x input, integrated gradients (captum), occlusion, contrast
    export.py       the research export: JSON, a self-contained HTML heatmap, a PNG
"""
