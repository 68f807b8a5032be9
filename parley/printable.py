"""Untrusted text (model output, program output, file names, data, remote errors) made safe to print.

`printable` drops escape sequences and control characters, so a model or a program cannot write to
the user's clipboard (OSC 52), retitle the window or move the cursor; `plain` wraps the result in a
Rich `Text`, so `[bold]` or `[/]` in it is shown as written instead of being read as Rich markup.
"""

from __future__ import annotations

import re

from rich.text import Text

# Escape sequences whole (CSI; OSC, DCS, SOS, PM and APC up to their terminator; two-character
# escapes, or a lone ESC), then every other C0 and C1 control character but newline and tab.
CONTROL = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)"
    r"|\x1b[ -/]*[0-~]?"
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"
)


def printable(text: str) -> str:
    """`text` without escape sequences or control characters (newlines and tabs stay)."""
    return CONTROL.sub("", text)


def plain(text: object, style: str = "") -> Text:
    """Untrusted text as Rich should print it: literally (no markup, no :emoji: codes), printable."""
    return Text(printable(str(text)), style=style)
