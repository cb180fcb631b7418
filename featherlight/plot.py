"""One picture of a run's curves from its ``metrics.csv``, without a TensorBoard server.

    python -m featherlight.plot <log_dir> [-o metrics.png]

``<log_dir>`` is a :class:`~featherlight.loggers.CSVLogger` version directory (``lightning_logs/version_0``), its
``metrics.csv`` itself, or a directory of versions (the newest is taken). The PNG, ``<log_dir>/metrics.png`` unless
``-o`` says otherwise, has one panel per metric family against the global step: ``train_loss``, ``val_loss`` and
``loss_epoch`` share the ``loss`` panel; epoch boundaries are faint vertical lines. The path is printed.

matplotlib is an optional extra (``pip install 'featherlight[plot]'``), imported only when a picture is drawn.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import sys
from collections import defaultdict
from typing import Optional, Union

__all__ = ["plot_metrics", "read_metrics", "main"]

_PATH = Union[str, "os.PathLike[str]"]
_METRICS_FILE = "metrics.csv"
_STAGE = re.compile(r"^(train|training|val|valid|validation|test|predict)[_/\-]|[_/\-](train|val|test)$")
_REDUCTION = re.compile(r"[_/\-](step|epoch)$")


def _find_csv(path: _PATH) -> str:
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    candidate = os.path.join(path, _METRICS_FILE)
    if os.path.isfile(candidate):
        return candidate
    if os.path.isdir(path):  # a directory of versions: the newest one that has metrics
        versions = []
        for entry in os.listdir(path):
            csv_path = os.path.join(path, entry, _METRICS_FILE)
            if os.path.isfile(csv_path):
                versions.append((os.path.getmtime(csv_path), csv_path))
        if versions:
            return max(versions)[1]
    raise FileNotFoundError(
        f"No {_METRICS_FILE} at {path!r}: pass a CSVLogger log directory (e.g. lightning_logs/version_0) or the file."
    )


def read_metrics(path: _PATH) -> dict[str, list[tuple[float, float, Optional[float]]]]:
    """Every metric column of ``metrics.csv`` as ``name -> [(step, value, epoch), ...]`` in file order.

    Empty cells and values that are not numbers are skipped; ``epoch`` is ``None`` where the row has none.
    """
    series: dict[str, list[tuple[float, float, Optional[float]]]] = defaultdict(list)
    with open(_find_csv(path), newline="", encoding="utf-8") as file:
        for row_number, row in enumerate(csv.DictReader(file)):
            step = _number(row.get("step"))
            step = float(row_number) if step is None else step
            epoch = _number(row.get("epoch"))
            for key, cell in row.items():
                if key in ("step", "epoch") or key is None:
                    continue
                value = _number(cell)
                if value is not None:
                    series[key].append((step, value, epoch))
    return dict(series)


def _number(cell: Optional[str]) -> Optional[float]:
    if cell is None or cell == "":
        return None
    try:
        return float(cell)
    except ValueError:
        return None


def _family(name: str) -> str:
    """``train_loss``, ``val/loss`` and ``loss_epoch`` -> ``loss``: curves of one quantity share a panel."""
    base = _REDUCTION.sub("", name)
    base = _STAGE.sub("", base)
    return base or name


def plot_metrics(path: _PATH, out: Optional[_PATH] = None, title: Optional[str] = None) -> str:
    """Draw every metric of the ``metrics.csv`` at ``path`` against the step into one PNG; return its path.

    Args:
        path: A CSVLogger log directory, its ``metrics.csv``, or a directory of version directories.
        out: Where to write the PNG; ``metrics.png`` beside the CSV by default.
        title: Title of the figure; the log directory by default.

    Raises:
        ModuleNotFoundError: If matplotlib is not installed.
        FileNotFoundError: If there is no ``metrics.csv`` at ``path``.
        ValueError: If the file holds no numeric metric.
    """
    csv_path = _find_csv(path)
    series = read_metrics(csv_path)
    if not series:
        raise ValueError(f"{csv_path} holds no numeric metric to plot.")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ModuleNotFoundError(
            "Plotting metrics needs matplotlib: `pip install 'featherlight[plot]'` (or `pip install matplotlib`)."
        ) from None

    families: dict[str, list[str]] = defaultdict(list)
    for name in sorted(series):
        families[_family(name)].append(name)
    epoch_starts = _epoch_starts(series)

    n = len(families)
    cols = 1 if n == 1 else 2 if n <= 4 else 3
    rows = math.ceil(n / cols)
    # Figure + the Agg canvas directly: no pyplot, so no GUI backend and no global figure state
    figure = Figure(figsize=(5.5 * cols, 3.4 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False)
    for ax, (family, names) in zip(axes.flat, families.items()):
        for boundary in epoch_starts:
            ax.axvline(boundary, color="0.85", linewidth=0.8, zorder=0)
        for name in names:
            points = series[name]
            steps = [p[0] for p in points]
            values = [p[1] for p in points]
            sparse = len(points) <= 50  # per-epoch values: show the points, not just a line through them
            ax.plot(steps, values, marker="o" if sparse else None, markersize=3.5, linewidth=1.4, label=name)
        ax.set_title(family)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if len(names) > 1 or names[0] != family:
            ax.legend(fontsize="small")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    figure.suptitle(title if title is not None else os.path.dirname(os.path.abspath(csv_path)), fontsize="medium")
    out_path = os.fspath(out) if out is not None else os.path.join(os.path.dirname(csv_path), "metrics.png")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    figure.savefig(out_path, dpi=100)
    return out_path


def _epoch_starts(series: dict[str, list[tuple[float, float, Optional[float]]]]) -> list[float]:
    """The first step of each epoch after the first, from the ``epoch`` column."""
    first: dict[float, float] = {}
    for points in series.values():
        for step, _, epoch in points:
            if epoch is not None and (epoch not in first or step < first[epoch]):
                first[epoch] = step
    return [step for epoch, step in sorted(first.items())][1:]


def main(argv: Optional[list[str]] = None) -> str:
    parser = argparse.ArgumentParser(
        prog="python -m featherlight.plot", description="Draw the metrics of a CSVLogger run into one PNG."
    )
    parser.add_argument("log_dir", help="CSVLogger log directory, its metrics.csv, or a directory of versions")
    parser.add_argument("-o", "--out", help="PNG to write (default: metrics.png beside metrics.csv)")
    parser.add_argument("--title", help="figure title (default: the log directory)")
    args = parser.parse_args(argv)
    try:
        out = plot_metrics(args.log_dir, args.out, args.title)
    except (FileNotFoundError, ModuleNotFoundError, ValueError) as ex:
        print(f"error: {ex}", file=sys.stderr)
        raise SystemExit(1) from None
    print(out)
    return out


if __name__ == "__main__":
    main()
