"""Static PNG plots (matplotlib, Agg): they render offline, unlike dvc plots' vega HTML."""
from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np


def _figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp: same input, same bytes
    return buf.getvalue()


def class_histogram_png(generated: np.ndarray, real: np.ndarray, classes: list[str], coverage: float) -> bytes:
    """Bar chart of class shares, generated (as the classifier sees them) vs real test labels."""
    fig = _figure((8, 4))
    ax = fig.add_subplot()
    x = np.arange(len(classes))
    ax.bar(x - 0.2, real / real.sum(), width=0.4, label="real (test labels)")
    ax.bar(x + 0.2, generated / max(generated.sum(), 1), width=0.4, label="generated (classifier)")
    ax.set_xticks(x, classes, rotation=30, ha="right")
    ax.set_ylabel("share of samples")
    ax.set_title(f"class_coverage {coverage:.3f}")
    ax.legend()
    return _png(fig)


def curves_png(steps: Sequence[int], curves: dict[str, Sequence[float]], *, title: str) -> bytes:
    """Line plot of named curves over training steps (e.g. loss_d, loss_g)."""
    fig = _figure((8, 4))
    ax = fig.add_subplot()
    for name, values in curves.items():
        ax.plot(steps, values, label=name)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)
