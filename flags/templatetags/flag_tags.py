"""Readable renderings of targeting data for the console."""

from __future__ import annotations

import json
from typing import Any

from django import template

from flags.evaluation.targeting_schema import OPERATORS, SEGMENT_OPERATOR

register = template.Library()


@register.filter
def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


@register.filter
def weight_percent(weight: int) -> str:
    return f"{weight / 1000:g} %"


@register.filter
def clause_text(clause: dict) -> str:
    op = clause.get("op", "")
    values = ", ".join(str(v) for v in clause.get("values") or [])
    negate = clause.get("negate", False)
    if op == SEGMENT_OPERATOR:
        return f"{'not ' if negate else ''}in segment {values}"
    text = f"{clause.get('attribute', '')} {OPERATORS.get(op, op)} {values}"
    return f"not ({text})" if negate else text


@register.filter
def serve_text(serve: dict) -> str:
    if "variation" in serve:
        return str(serve["variation"])
    return " / ".join(f"{b['variation']} {b['weight'] / 1000:g} %" for b in serve.get("split", []))
