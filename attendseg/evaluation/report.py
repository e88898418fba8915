"""Figures out: a markdown table and plain JSON."""

from __future__ import annotations

import json
import math
from typing import Sequence


def _cell(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]], digits: int = 3) -> str:
    """A markdown table: one line per row dict, ``columns`` = ``[(key, header), …]``.

    Floats print with ``digits`` decimals; missing values and NaN print as ``–``.
    """
    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "---|" * len(columns)
    body = ["| " + " | ".join(_cell(row.get(k), digits) for k, _ in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def to_json(figures, indent: int | None = 1) -> str:
    """``figures`` as JSON text: numpy values become plain numbers, NaN/inf become null."""
    from ..results import _jsonable

    return json.dumps(_jsonable(figures), indent=indent)
