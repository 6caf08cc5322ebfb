#!/usr/bin/env python3
"""Renders every fixture chat template on every fixture conversation the way Hugging Face
`transformers.apply_chat_template` does (jinja2's ImmutableSandboxedEnvironment with
trim_blocks, lstrip_blocks, loop controls, raise_exception, strftime_now and transformers'
tojson), and writes fixtures/rendered.json: the reference `real_templates.rs` compares
corral's minijinja renders with.

    python3 generation/tests/render_reference.py          # rewrite rendered.json
    python3 generation/tests/render_reference.py --check  # exit 1 if it is stale

strftime_now returns a fixed date (FIXED_DATE) so the reference does not change daily; the
Rust test puts the same date in place of today's.
"""
import json
import pathlib
import sys
from datetime import datetime

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = pathlib.Path(__file__).resolve().parent / "fixtures"
FIXED_DATE = datetime(2026, 1, 15)


class Raised(Exception):
    pass


def raise_exception(message):
    raise Raised(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def environment():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: FIXED_DATE.strftime(fmt)
    return env


def render_all():
    env = environment()
    tokens = json.loads((HERE / "special_tokens.json").read_text())
    cases = json.loads((HERE / "conversations.json").read_text())
    out = {}
    for path in sorted((HERE / "templates").glob("*.jinja")):
        bos, eos = tokens[path.name]
        template = env.from_string(path.read_text())
        results = {}
        for case in cases:
            ctx = dict(case.get("extra", {}))
            ctx.update(messages=case["messages"], tools=case.get("tools"),
                       add_generation_prompt=case["add_generation_prompt"],
                       bos_token=bos, eos_token=eos)
            try:
                results[case["name"]] = {"text": template.render(**ctx)}
            except Raised as e:
                results[case["name"]] = {"raised": str(e)}
            except Exception as e:  # noqa: BLE001 - any other failure is recorded
                results[case["name"]] = {"error": f"{type(e).__name__}: {e}"}
        out[path.name] = results
    return json.dumps(out, ensure_ascii=False, indent=1, sort_keys=True) + "\n"


def main():
    text = render_all()
    target = HERE / "rendered.json"
    if "--check" in sys.argv:
        if target.read_text() != text:
            print(f"{target} is stale: run {sys.argv[0]}", file=sys.stderr)
            sys.exit(1)
        print(f"{target} matches jinja2 {jinja2.__version__}")
        return
    target.write_text(text)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
