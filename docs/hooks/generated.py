"""MkDocs hook: fills the guides' generated parts from the code, so they cannot drift from it.

A page asks for a part with an HTML comment on a line of its own:

- ``<!-- tevo-hold:responses OPERATION_ID -->``: every status an operation answers, each problem
  code with what it means and what to do (from :data:`tevo_hold.openapi.OPERATIONS`, the table
  the OpenAPI document is generated from);
- ``<!-- tevo-hold:codes -->``: every problem code of the API, with its status and title
  (from :mod:`tevo_hold.errors`, and the HTTP server's own answers);
- ``<!-- tevo-hold:server -->``: what the HTTP server answers by itself to a request it cannot
  read (from :data:`tevo_hold.web.SERVER_PROBLEMS`);
- ``<!-- tevo-hold:settings -->``: every ``TEVO_HOLD_*`` setting with its default and meaning
  (from :class:`tevo_hold.settings.Settings`).

An unknown part fails the build.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from mkdocs.exceptions import PluginError

from tevo_hold import errors
from tevo_hold.openapi import OPERATIONS, Operation
from tevo_hold.settings import PREFIX, Settings
from tevo_hold.web import SERVER_PROBLEMS

_MARKER = re.compile(r"^<!-- tevo-hold:(?P<part>[a-z]+)(?: (?P<arg>\S+))? -->$", re.MULTILINE)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _operation(operation_id: str) -> Operation:
    for op in OPERATIONS:
        if op.operation_id == operation_id:
            return op
    raise PluginError(f"no operation {operation_id!r} in tevo_hold.openapi.OPERATIONS")


def responses(operation_id: str) -> str:
    """The response-code table of one operation."""
    op = _operation(operation_id)
    rows = [
        f"| **{op.success}** | (success) | {_cell(op.success_description)} | |",
        *(
            f"| {a.status} | `{a.code}` | {_cell(a.explain())} | {_cell(a.advice)} |"
            for a in sorted(op.answers, key=lambda a: a.status)
        ),
    ]
    head = "| Status | `code` | What it means | What to do |\n| --- | --- | --- | --- |"
    return "\n".join([head, *rows])


def _subclasses(cls: type[errors.TevoHoldError]) -> list[type[errors.TevoHoldError]]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return found


def codes() -> str:
    """Every problem code the HTTP API can answer."""
    answered = [
        cls
        for cls in [errors.InternalError, *_subclasses(errors.TevoHoldError)]
        if cls not in (errors.ConfigurationError, errors.Conflict)
    ]
    rows = {cls.code: (cls.status, cls.code, cls.title) for cls in answered}
    for problem in SERVER_PROBLEMS:
        rows.setdefault(problem.code, (problem.status, problem.code, problem.title))
    head = "| Status | `code` | Title |\n| --- | --- | --- |"
    return "\n".join([head, *(f"| {s} | `{c}` | {t} |" for s, c, t in sorted(rows.values()))])


def server() -> str:
    """What the HTTP server answers by itself, before any endpoint runs."""
    rows = ["| Status | `code` | When | What to do |", "| --- | --- | --- | --- |"]
    for p in SERVER_PROBLEMS:
        if p.code == errors.InternalError.code:
            advice = "Retry after a short back-off; if it persists, call the seller."
        else:
            advice = "Do not retry it unchanged: fix the request."
        rows.append(f"| {p.status} | `{p.code}` | {_cell(p.meaning)} | {advice} |")
    return "\n".join(rows)


def _default(value: Any) -> str:
    if value is None or value == ():
        return "(none)"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def settings() -> str:
    """Every setting, as the environment (or Flask config) names it."""
    head = "| Setting | Default | Meaning |\n| --- | --- | --- |"
    rows = [
        f"| `{PREFIX}{f.name.upper()}` | {_default(f.default)} | {_cell(f.metadata['help'])} |"
        for f in dataclasses.fields(Settings)
    ]
    return "\n".join([head, *rows])


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    def fill(match: re.Match[str]) -> str:
        part, arg = match["part"], match["arg"]
        if part == "responses" and arg:
            return responses(arg)
        if part == "codes" and not arg:
            return codes()
        if part == "settings" and not arg:
            return settings()
        if part == "server" and not arg:
            return server()
        raise PluginError(f"{page.file.src_path}: unknown generated part {match[0]!r}")

    return _MARKER.sub(fill, markdown)
