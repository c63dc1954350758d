"""`orchestrator report`: a finished (or running) sweep's leaderboard and plots, read from MLflow.

Two figures, saved beside each other and logged to the sweep's parent run:
- learning_curves.png: val exact recall per epoch of every trial (where ASHA cut trials short);
- learning_rate.png: final val recall against learning rate, by method (where the good region is).
"""

from __future__ import annotations

from pathlib import Path

from orchestrator import hints, tracking
from orchestrator.errors import SweepError
from orchestrator.leaderboard import format_leaderboard, leaderboard


def _figures(client, board: list[dict], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    methods = sorted({row["method"] for row in board if row["method"]})
    # One look per method, in both figures, whatever methods the sweep searched.
    styles = {method: ("osv^D"[i % 5], ("-", "--", ":", "-.")[i % 4]) for i, method in enumerate(methods)}
    curves, ax = plt.subplots(figsize=(8, 5))
    for row in board:
        history = client.get_metric_history(row["run_id"], "val_exact_recall")
        steps = sorted({m.step: m.value for m in history}.items())
        if steps:
            ax.plot([s for s, _ in steps], [v for _, v in steps], marker=".",
                    label=f"{row['trial']} {row['method']}", linestyle=styles.get(row["method"], ("", "-"))[1])
    ax.set(xlabel="epoch", ylabel="val exact recall", title="Learning curves (short lines: stopped by ASHA)")
    ax.legend(fontsize=7, ncol=2)
    scatter, bx = plt.subplots(figsize=(8, 5))
    for method in methods:
        rows = [r for r in board if r["method"] == method and r["val_exact_recall"] is not None]
        bx.scatter([r["learning_rate"] for r in rows], [r["val_exact_recall"] for r in rows],
                   marker=styles[method][0], label=method)
    bx.set(xscale="log", xlabel="learning rate", ylabel="final val exact recall", title="Recall by learning rate")
    bx.legend()
    paths = [out_dir / "learning_curves.png", out_dir / "learning_rate.png"]
    for figure, path in zip((curves, scatter), paths):
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)
    return paths


def report(sweep: str | None, experiment: str, out_dir: Path) -> tuple[str, list[Path]]:
    """(leaderboard markdown, figure paths) for the named sweep, or the newest one."""
    client = tracking.client()
    parent = tracking.find_sweep_run(client, experiment, sweep)
    if parent is None:
        raise SweepError(hints.unknown_sweep(client, experiment, sweep, "report"))
    board = leaderboard(client, parent.info.run_id)
    paths = _figures(client, board, out_dir)
    for path in paths:
        client.log_artifact(parent.info.run_id, str(path), artifact_path="report")
    title = f"sweep '{parent.data.tags[tracking.SWEEP]}' ({parent.info.status}, {len(board)} trials)\n"
    return title + format_leaderboard(board), paths
