"""Pictures for people: an equity curve drawn once, saved as a PNG a reader can trust.

matplotlib is imported lazily (it costs about half a second at start-up, and the API and
the live worker never draw), with the Agg backend: servers and Dagster runs have no display.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def equity_axes(title: str, *, ylabel: str, xlabel: str) -> Iterator[tuple[Any, Callable[[Path], Path]]]:
    """A figure's axes to draw cumulative pips on, and ``save(path)``: the zero line, titles,
    legend and layout, written to a temporary file first so a reader never sees half a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)

    def save(path: Path) -> Path:
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_xlabel(xlabel)
        ax.legend(loc="best")
        fig.autofmt_xdate()
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fig.savefig(tmp, format="png")
        tmp.replace(path)
        return path

    try:
        yield ax, save
    finally:
        plt.close(fig)
