"""Start-up as a new user meets it: seconds from launching `parley chat` to the end of its first answer.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/startup.py [--runs 2] [-- CHAT ARGS...]

Each run starts `parley chat` in a pseudo-terminal with a fresh PARLEY_HOME for the first run (so the
GGUF file is converted and nothing is cached, as after `make chat` on a new machine) and the same home
for the later runs (everything cached), asks one coding question (greedy, 64 new tokens at most),
then a follow-up. Prints JSON: per run, when the prompt appeared, when the first answer was done, and
how long the follow-up took. Extra arguments go to `parley chat` (e.g. `-- --compile`, or
`-- --dtype bfloat16` for the former default), so settings compare side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

PROMPT = re.compile(r"you>\x1b\[")  # the chat's input line (prompt_toolkit), as tests/test_cli_chat.py waits for it
QUESTIONS = ("Write a Python function that reverses a string.", "Now make it handle None.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="the first with nothing cached, the rest warm")
    parser.add_argument("chat_args", nargs="*", help="after --: arguments for parley chat")
    args = parser.parse_args()
    import pexpect

    parley = str(Path(sys.executable).with_name("parley"))
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1", PARLEY_HOME=home)
        runs = []
        for _ in range(args.runs):
            start = time.perf_counter()
            child = pexpect.spawn(parley, ["chat", "--temperature", "0", "--max-new-tokens", "64", *args.chat_args],
                                  env=env, encoding="utf-8", dimensions=(50, 200), timeout=600)
            child.expect(PROMPT)
            ready = time.perf_counter() - start
            child.sendline(QUESTIONS[0])
            child.expect(PROMPT)
            answered = time.perf_counter() - start
            child.sendline(QUESTIONS[1])
            follow = time.perf_counter()
            child.expect(PROMPT)
            runs.append({"prompt_ready_s": round(ready, 1), "first_answer_done_s": round(answered, 1),
                         "follow_up_s": round(time.perf_counter() - follow, 1)})
            child.sendcontrol("d")
            child.close()
    print(json.dumps({"bench": "startup", "chat_args": args.chat_args, "cold_then_warm": runs}, indent=2))


if __name__ == "__main__":
    main()
