"""The research export of an Explanation: one JSON document, a self-contained HTML heatmap and a PNG.

    document = to_document(explanation, model="smollm2", template=loaded.template)
    write_all(document, "why.json")     # why.json, why.html (no network, no external file), why.png

The JSON (also the body of POST /v1/explain):
    prompt_tokens   the prompt's tokens as text slices of the rendered prompt (joined: the prompt)
    reply_tokens    [{text, logprob, entropy, top: [[text, logprob], ...]}] for every reply token
    span            [first, end): the reply tokens explained; target_logprob: their log-prob
    attributions    {method: [[score per prompt token] per reply token of the span]}
    scores          {method: [score per prompt token]} for the whole span (the rows summed)
    by_message      {method: [{message, score}]}; by_line {method: [{line, text, score}]} (1-based)
    contrast        {alternative, logprob_span, logprob_alternative, scores} when asked
    model, template (its text and fingerprint), parley_version, messages, reply

A positive score means the token raised the log-probability of the span; negative, lowered it.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from parley.explain.attribution import Explanation, finite
from parley.files import write_atomic
from parley.templates import fingerprint


def to_document(explanation: Explanation, model: str, template: str, contrast: dict | None = None) -> dict:
    from parley import __version__

    layout = explanation.layout
    text = layout.prompt_text
    document = {
        "model": model, "template": {"fingerprint": fingerprint(template), "text": template},
        "parley_version": __version__, "messages": layout.messages, "reply": layout.reply,
        "prompt_tokens": [text[s:e] for s, e in layout.prompt_offsets],
        "token_message": layout.token_message, "token_line": [line + 1 for line in layout.token_line],
        "message_labels": layout.message_labels,
        "reply_tokens": [{"text": t.text, "logprob": t.logprob, "entropy": t.entropy,
                          "top": [[alt, lp] for alt, lp in t.top]} for t in explanation.reply_tokens],
        "span": list(explanation.span), "target_logprob": explanation.target_logprob,
        "attributions": {m: [finite(row) for row in rows] for m, rows in explanation.matrix.items()},
        "scores": {m: finite(v) for m, v in explanation.scores.items()},
        "by_message": {m: [{"message": label, "score": score} for label, score in explanation.by_message(m)]
                       for m in explanation.scores},
        "by_line": {m: [{"line": i + 1, "text": line, "score": score}
                        for i, (line, score) in enumerate(explanation.by_line(m))] for m in explanation.scores},
    }
    if explanation.completeness:
        document["completeness"] = explanation.completeness
    if contrast:
        document["contrast"] = contrast
    return document


def write_all(document: dict, path: str | Path) -> list[Path]:
    """PATH.json, PATH.html and PATH.png (each written whole or not at all); returns the three paths."""
    path = Path(path)
    if path.suffix != ".json":
        path = path.with_name(path.name + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(document, ensure_ascii=False, indent=1) + "\n")
    write_atomic(path.with_suffix(".html"), to_html(document))
    return [path, path.with_suffix(".html"), to_png(document, path.with_suffix(".png"))]


def colour(score: float, scale: float) -> str:
    """A CSS background for `score`: red for positive, blue for negative, transparent at zero."""
    if not scale:
        return "transparent"
    share = max(-1.0, min(1.0, score / scale))
    rgb = "214,39,40" if share > 0 else "31,119,180"
    return f"rgba({rgb},{abs(share):.2f})"


def to_html(document: dict) -> str:
    """One page, no external file: per method the prompt as a heatmap for the whole span, the reply
    coloured by probability (hover: alternatives), and the messages and lines that counted most.
    Clicking a reply token shows that token's row; the page works without script as well."""
    sections = []
    for method, scores in document["scores"].items():
        scale = max(map(abs, scores), default=0.0)
        tokens = "".join(f'<span class="t" data-i="{i}" style="background:{colour(s, scale)}" '
                         f'title="{s:+.4f}">{html.escape(t)}</span>'
                         for i, (t, s) in enumerate(zip(document["prompt_tokens"], scores)))
        messages = "".join(f"<tr><td>{html.escape(m['message'])}</td><td>{m['score']:+.4f}</td></tr>"
                           for m in document["by_message"][method])
        lines = sorted(document["by_line"][method], key=lambda x: -abs(x["score"]))[:10]
        top_lines = "".join(f"<tr><td>{x['line']}</td><td><code>{html.escape(x['text'][:120])}</code></td>"
                            f"<td>{x['score']:+.4f}</td></tr>" for x in lines)
        sections.append(f'<section data-method="{method}"><h2>{method}</h2><pre class="prompt">{tokens}</pre>'
                        f"<table><tr><th>message</th><th>score</th></tr>{messages}</table>"
                        f"<table><tr><th>line</th><th>text</th><th>score</th></tr>{top_lines}</table></section>")
    first, end = document["span"]
    reply = "".join(
        f'<span class="r{" in" if first <= i < end else ""}" data-row="{i - first}" '
        f'style="background:rgba(255,165,0,{min(1.0, -t["logprob"] / 5):.2f})" '
        f'title="{html.escape(_alternatives(t))}">{html.escape(t["text"])}</span>'
        for i, t in enumerate(document["reply_tokens"]))
    data = json.dumps({"attributions": document["attributions"], "scores": document["scores"]}).replace("</", "<\\/")
    return _PAGE.format(model=html.escape(document["model"]), version=html.escape(document["parley_version"]),
                        logprob=document["target_logprob"], reply=reply, sections="".join(sections), data=data)


def _alternatives(token: dict) -> str:
    alternatives = ", ".join(f"{text!r} {lp:.2f}" for text, lp in token["top"])
    return f"logprob {token['logprob']:.3f} · entropy {token['entropy']:.2f} · top: {alternatives}"


_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Why? · parley explain</title>
<style>
body{{font:15px/1.5 system-ui,sans-serif;margin:1.5rem;max-width:70rem;color:#222;background:#fff}}
@media (prefers-color-scheme:dark){{body{{color:#ddd;background:#161616}}}}
pre{{white-space:pre-wrap;word-break:break-word;font:13px/1.6 ui-monospace,monospace}}
.t,.r{{border-radius:2px}} .r{{cursor:pointer}} .r.in{{text-decoration:underline dotted}}
.r.sel{{outline:2px solid currentColor}} table{{border-collapse:collapse;margin:.5rem 1rem .5rem 0;display:inline-table}}
td,th{{border:1px solid #8884;padding:2px 6px;text-align:left}} small{{opacity:.7}}
</style></head><body>
<h1>Why?</h1><p><small>{model} · parley {version} · log p(span) = {logprob:.3f}.
Red prompt tokens raised the explained span's probability, blue lowered it. Reply shaded by how unsure
the model was (hover: alternatives); click a token of the span for its own row, again for the whole span.</small></p>
<h2>Reply</h2><pre class="reply">{reply}</pre>{sections}
<script>
const data = {data};
let selected = null;
function paint(row) {{
  for (const section of document.querySelectorAll("section")) {{
    const method = section.dataset.method;
    const scores = row === null ? data.scores[method] : (data.attributions[method] || [])[row];
    if (!scores) continue;
    const scale = Math.max(...scores.map(Math.abs)) || 1;
    for (const el of section.querySelectorAll(".t")) {{
      const s = scores[+el.dataset.i], a = Math.min(1, Math.abs(s) / scale).toFixed(2);
      el.style.background = s > 0 ? `rgba(214,39,40,${{a}})` : `rgba(31,119,180,${{a}})`;
      el.title = s.toFixed(4);
    }}
  }}
}}
for (const el of document.querySelectorAll(".r.in")) el.addEventListener("click", () => {{
  document.querySelectorAll(".r.sel").forEach(x => x.classList.remove("sel"));
  selected = selected === +el.dataset.row ? null : +el.dataset.row;
  if (selected !== null) el.classList.add("sel");
  paint(selected);
}});
</script></body></html>
"""


def to_png(document: dict, path: str | Path) -> Path:
    """One heatmap per method (rows: the span's reply tokens; columns: prompt tokens), and the messages."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(document["scores"])
    fig, axes = plt.subplots(len(methods), 2, figsize=(13, 3.2 * len(methods) + 1), squeeze=False,
                             gridspec_kw={"width_ratios": [4, 1]})
    first, end = document["span"]
    reply = [t["text"] for t in document["reply_tokens"][first:end]]
    for (heat, bars), method in zip(axes, methods):
        rows = document["attributions"].get(method) or [document["scores"][method]]
        matrix = np.array(rows, dtype=float)
        scale = float(np.abs(matrix).max()) or 1.0
        heat.imshow(matrix, aspect="auto", cmap="coolwarm", vmin=-scale, vmax=scale, interpolation="nearest")
        heat.set_title(f"{method}: reply tokens (rows) × prompt tokens")
        _label_axis(heat.set_xticks, document["prompt_tokens"])
        _label_axis(heat.set_yticks, reply if len(rows) == len(reply) else ["span"])
        labels = [m["message"] for m in document["by_message"][method]]
        values = [m["score"] for m in document["by_message"][method]]
        bars.barh(range(len(values)), values, color=["#d62728" if v > 0 else "#1f77b4" for v in values])
        bars.set_yticks(range(len(labels)), labels, fontsize=8)
        bars.invert_yaxis()
        bars.set_title("by message")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _label_axis(set_ticks, labels: list[str], most: int = 60) -> None:
    """Token labels when there are few enough to read; otherwise positions only."""
    if len(labels) <= most:
        set_ticks(range(len(labels)), [repr(t)[1:-1][:12] for t in labels], fontsize=6,
                  **({"rotation": 90} if set_ticks.__name__ == "set_xticks" else {}))


def summary(document: dict, top: int = 5) -> str:
    """A few lines for the terminal: per method, the messages, lines and tokens that counted most."""
    first, end = document["span"]
    span = "".join(t["text"] for t in document["reply_tokens"][first:end])
    out = [f"explained: {span[:200]!r} (log p = {document['target_logprob']:.3f})"]
    for method, scores in document["scores"].items():
        out.append(f"\n{method}")
        out.append("  messages: " + ", ".join(f"{m['message']} {m['score']:+.3f}" for m in document["by_message"][method]))
        lines = sorted(document["by_line"][method], key=lambda x: -abs(x["score"]))[:top]
        out += [f"  line {x['line']:>3} {x['score']:+.3f}  {x['text'][:80]}" for x in lines]
        best = sorted(range(len(scores)), key=lambda i: -abs(scores[i]))[:top]
        out.append("  tokens: " + ", ".join(f"{document['prompt_tokens'][i]!r} {scores[i]:+.3f}" for i in best))
    if "contrast" in document:
        c = document["contrast"]
        scores = c["scores"]
        best = sorted(range(len(scores)), key=lambda i: -abs(scores[i]))[:top]
        out.append(f"\nwhy {span[:60]!r} (log p {c['logprob_span']:.3f}) and not {c['alternative'][:60]!r} "
                   f"(log p {c['logprob_alternative']:.3f})")
        out.append("  tokens: " + ", ".join(f"{document['prompt_tokens'][i]!r} {scores[i]:+.3f}" for i in best))
    return "\n".join(out)
