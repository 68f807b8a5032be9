"""A small agent loop with the official openai SDK against `parley serve`: the model calls a local Python
function (a calculator) and answers with its result.

    .venv/bin/parley serve &                       # the embedded SmolLM2 on http://127.0.0.1:8000
    .venv/bin/python examples/agent.py "What is 1234 * 5678?"
    .venv/bin/python examples/agent.py --base-url http://host:8000/v1 --model NAME --first auto "..."

The first turn uses `tool_choice="required"` (the server decodes under the tools' schemas, so the call
is always well formed: a 135M model would rarely call a tool unprompted), and the turn after the
results `none`, so the model answers with them. Pass `--first auto` for a model that chooses its
tools well by itself (see parley/tools.py): every turn but the last is then `auto`.
"""

from __future__ import annotations

import argparse
import ast
import json
import operator

from openai import OpenAI

TOOLS = [{"type": "function", "function": {
    "name": "calculate",
    "description": "Evaluate an arithmetic expression (numbers, + - * / ** and parentheses) and return the number.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["expression"],
                   "properties": {"expression": {"type": "string", "pattern": r"^[0-9(][0-9+\-*/(). ]{0,79}$",
                                                 "description": "e.g. (2 + 3) * 4"}}},
}}]
OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
             ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos}


def calculate(expression: str) -> str:
    """The value of an arithmetic expression, or what is wrong with it (never eval(): the model wrote it)."""
    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
            return OPERATORS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in OPERATORS:
            return OPERATORS[type(node.op)](value(node.operand))
        raise ValueError(f"not arithmetic: {ast.unparse(node)}")
    try:
        return str(value(ast.parse(expression, mode="eval").body))
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError) as e:
        return f"error: {e}"


def run_tool(call) -> str:
    if call.function.name != "calculate":
        return f"error: no tool named {call.function.name!r}"
    try:
        arguments = json.loads(call.function.arguments)
        return calculate(arguments["expression"])
    except (ValueError, KeyError, TypeError) as e:
        return f"error: bad arguments {call.function.arguments!r} ({e})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="What is 1234 * 5678?")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--first", choices=["required", "auto"], default="required", help="the first turn's tool_choice")
    parser.add_argument("--steps", type=int, default=3, help="model turns at most")
    args = parser.parse_args()

    client = OpenAI(base_url=args.base_url, api_key="unused-or-your-key")
    messages = [{"role": "system", "content": "Use the calculate tool for arithmetic, then give the answer."},
                {"role": "user", "content": args.question}]
    for step in range(args.steps):
        later = "auto" if args.first == "auto" and step < args.steps - 1 else "none"
        choice = args.first if step == 0 else later
        reply = client.chat.completions.create(model=args.model, messages=messages, tools=TOOLS, tool_choice=choice,
                                               parallel_tool_calls=False, temperature=0, max_tokens=120)
        message = reply.choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        if not message.tool_calls:
            print(f"assistant: {message.content}")
            return
        for call in message.tool_calls:
            result = run_tool(call)
            print(f"tool call: {call.function.name}({call.function.arguments}) -> {result}")
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})


if __name__ == "__main__":
    main()
