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


def class_histogram_png(generated: np.ndarray, real: np.ndarray, classes: list[str], *, title: str,
                        real_label: str = "real (test labels)", generated_label: str = "generated (classifier)",
                        ylabel: str = "share of samples") -> bytes:
    """Bar chart of the shares per class (or per rotation, unlabelled), generated vs real."""
    fig = _figure((8, 4))
    ax = fig.add_subplot()
    x = np.arange(len(classes))
    ax.bar(x - 0.2, real / max(real.sum(), 1), width=0.4, label=real_label)
    ax.bar(x + 0.2, generated / max(generated.sum(), 1), width=0.4, label=generated_label)
    ax.set_xticks(x, classes, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
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
