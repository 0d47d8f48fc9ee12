"""``pureml plot RUN``: loss and validation curves of a run folder to a PNG (extra ``plot``).

>>> plot_run("artifacts")            # doctest: +SKIP
PosixPath('artifacts/curves.png')
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .loggers import METRICS_FILE, flatten


def read_metrics(run: str | os.PathLike) -> list[dict]:
    path = Path(run) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {METRICS_FILE} in {run}: is it a run folder?")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_run(run: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """Draw the training loss and every validation F1 over steps; returns the PNG's path."""
    rows = read_metrics(run)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("pureml plot needs matplotlib: pip install 'pureml[plot]'") from None
    output = Path(output) if output is not None else Path(run) / "curves.png"
    from matplotlib.ticker import LogFormatterSciNotation

    class PlainLog(LogFormatterSciNotation):
        """0.4 and 2 rather than 4x10^-1; labels the ticks the default would (fewer if crowded)."""

        def __call__(self, x, pos=None):
            return f"{x:g}" if super().__call__(x, pos) else ""

    # one step axis for both panels, so a validation point sits under the loss at its step
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    fig.suptitle(Path(run).resolve().name)
    steps = [r["step"] for r in rows if "loss" in r]
    # a line through one point draws nothing: a run of one logged step gets a marker
    marker = "o" if len(steps) == 1 else None
    ax_loss.plot(steps, [r["loss"] for r in rows if "loss" in r], lw=1, marker=marker)
    ax_loss.set_title("training loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss (log scale)")
    ax_loss.set_yscale("log")
    ax_loss.yaxis.set_major_formatter(PlainLog())
    ax_loss.yaxis.set_minor_formatter(PlainLog(labelOnlyBase=False))
    curves: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        for key, v in flatten(r.get("validation") or {}).items():
            if key.endswith("micro/f1") and isinstance(v, int | float):
                curves.setdefault(key.removesuffix("/micro/f1"), []).append((r["step"], v))
    for name, pts in curves.items():
        ax_val.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax_val.set_title("validation")
    ax_val.set_xlabel("step")
    ax_val.set_ylabel("F1 (micro)")
    if curves:
        ax_val.legend()
    else:
        ax_val.text(0.5, 0.5, "no validation scores", ha="center", transform=ax_val.transAxes)
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output
