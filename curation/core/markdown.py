"""Small Markdown renderers shared by asset metadata and reports."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any


def _cell(value: Any, width: int) -> str:
    text = "" if value is None else str(value)
    text = text.replace("\n", " ⏎ ").replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def table_cell(text: str) -> str:
    """``text`` safe inside one cell of a Markdown table: pipes escaped, on one line."""
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, width: int = 80) -> str:
    """Rows as a Markdown table; long cells are shortened to ``width`` characters."""
    if not rows:
        return "_(none)_"
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c), width) for c in columns) + " |")
    return "\n".join(lines)


def counts_table(counts: Mapping[str, int], key: str, total: int | None = None) -> str:
    total = total if total is not None else sum(counts.values())
    rows = [
        {key: k, "rows": v, "share": f"{v / total:.1%}" if total else "-"}
        for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
    ]
    return markdown_table(rows)


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend: no display on servers or in the Dagster process.
    Imported on first use, so modules that only sometimes plot do not pay for matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(figure: Any, dpi: float | None = None, tight: bool = True) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed (pyplot keeps every open figure alive).
    ``tight=False`` keeps the figure's own margins (``subplots_adjust``): ``tight_layout`` measures
    every label first, about a third of the cost of a figure with many axes."""
    plt = pyplot()
    buffer = io.BytesIO()
    try:
        if tight:
            figure.tight_layout()
        figure.savefig(buffer, format="png", **({"dpi": dpi} if dpi else {}))
    finally:
        plt.close(figure)
    return buffer.getvalue()


def png_markdown(png: bytes, alt: str) -> str:
    """An inline Markdown image (base64 PNG): how plots show in Dagster's Markdown metadata and in reports."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


REGENERATE_REFERENCES = "distillery reference"
"""The command that rewrites every generated reference page in docs/ (filters, mappings, synthesis methods)."""


def generated_notice(registry: str) -> str:
    """The line at the top of a reference page generated from ``registry``, saying how to regenerate it."""
    return f"<!-- Generated from {registry} by `{REGENERATE_REFERENCES}`; do not edit by hand. -->"
