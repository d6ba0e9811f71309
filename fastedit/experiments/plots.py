"""Plots of a sequential run, drawn from its ``checkpoints.jsonl`` and ``edits.jsonl``.

``plot_run(RUN_DIR)`` writes:

* ``scores.png``: efficacy, paraphrase and neighbourhood scores of the latest edits and of all edits
  so far against the number of edits;
* ``forgetting.png``: at the last checkpoint, the efficacy of the edits by age (oldest first), and the
  efficacy of all earlier edits at every checkpoint;
* ``downstream.png``: few-shot GLUE accuracy / F1 / MCC against the number of edits;
* ``norms.png``: each edited layer's relative distance from its original weights, and every edit's
  update norm;

with the disabling edits marked (red dashed lines; a shaded window where generation entropy collapsed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["plot_run"]


# (key in the checkpoint summaries, line style, label): CounterFact's scores, then zsRE's
METRICS = (
    ("rewrite_success", "o-", "efficacy"),
    ("paraphrase_success", "s--", "paraphrase"),
    ("neighborhood_success", "^:", "neighbourhood"),
    ("score", "k-", "overall (harmonic mean)"),
    ("rewrite_token_acc", "o-", "rewrite token accuracy"),
    ("paraphrase_token_acc", "s--", "paraphrase token accuracy"),
    ("neighborhood_token_acc", "^:", "neighbourhood token accuracy"),
)


def _primary(summary: dict) -> str:
    return "rewrite_success" if "rewrite_success" in summary else "rewrite_argmax_acc"


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def _mark(ax, disabling: list[int], collapses: list[list[int]] = ()) -> None:
    for i, x in enumerate(disabling):
        ax.axvline(x, color="red", ls="--", lw=0.8, alpha=0.7, label="disabling edit" if i == 0 else None)
    for i, (lo, hi) in enumerate(collapses):
        ax.axvspan(lo, hi, color="red", alpha=0.12, label="generation entropy collapsed" if i == 0 else None)


@dataclass
class _Run:
    """What the plots of one run read: its checkpoints, its edits, a title and the marked edits."""

    ckpts: list[dict]
    edits: list[dict]
    title: str
    disabling: list[int]
    collapses: list[list[int]]

    @property
    def scored(self) -> list[dict]:
        return [c for c in self.ckpts if c.get("all_edits")]


def plot_run(run_dir: str | Path) -> list[Path]:
    """Draw the run's plots into its folder (scores, forgetting, downstream, norms; those the run has
    data for); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_path = Path(run_dir)
    ckpts = _read(run_path / "checkpoints.jsonl")
    edits = _read(run_path / "edits.jsonl")
    if not ckpts:
        raise FileNotFoundError(f"{run_path}: no checkpoints.jsonl to plot")
    cfg = json.loads((run_path / "config.json").read_text())["run"] if (run_path / "config.json").exists() else {}
    title = f"{cfg.get('method', '').upper()} ({cfg.get('mode', '')}) on {cfg.get('model', '')}, batch {cfg.get('batch_size', 1)}"
    run = _Run(ckpts, edits, title, [e["edit"] for e in edits if e.get("disabling")],
               [c["entropy_collapse"]["edits"] for c in ckpts if c.get("entropy_collapse")])
    written = []
    for name, draw in (("scores", _plot_scores), ("forgetting", _plot_forgetting), ("downstream", _plot_downstream),
                       ("norms", _plot_norms)):
        fig = draw(plt, run)
        if fig is not None:
            written.append(run_path / f"{name}.png")
            fig.tight_layout()
            fig.savefig(written[-1], dpi=120)
            plt.close(fig)
    return written


def _plot_scores(plt, run: _Run):
    """Scores of the latest edits and of all edits so far, at each checkpoint."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, label in ((axes[0], "latest_edits", "latest edits"), (axes[1], "all_edits", "all edits so far")):
        x = [c["edits"] for c in run.scored]
        for metric, style, name in METRICS:
            y = [c[key].get(metric) for c in run.scored]
            if any(v is not None for v in y):
                ax.plot(x, y, style, ms=3, label=name)
        _mark(ax, run.disabling, run.collapses)
        ax.set_title(label)
        ax.set_xlabel("edits applied")
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("score")
    axes[1].legend(fontsize=8)
    fig.suptitle(run.title)
    return fig


def _plot_forgetting(plt, run: _Run):
    """Which edits still hold at the end (oldest first), and all edits against the latest over time."""
    scored = run.scored
    if not scored:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    last = scored[-1]
    key = _primary(last["all_edits"])
    succ = last.get("holds") or []
    if succ:
        width = max(1, len(succ) // 20)
        xs = list(range(width, len(succ) + 1, width))
        a1.plot(xs, [sum(succ[x - width : x]) / width for x in xs], "o-", ms=3)
        a1.set_xlabel(f"edit index (oldest first; means of {width})")
        a1.set_ylabel("holds at the end of the run")
        a1.set_title(f"after {last['edits']} edits")
        a1.set_ylim(-0.02, 1.02)
    a2.plot([c["edits"] for c in scored], [c["all_edits"].get(key) for c in scored], "o-", ms=3,
            label="all earlier edits")
    a2.plot([c["edits"] for c in scored], [c["latest_edits"].get(key) for c in scored], "s--", ms=3,
            label="latest edits")
    _mark(a2, run.disabling)
    a2.set_xlabel("edits applied")
    a2.set_ylabel("efficacy" if key == "rewrite_success" else key)
    a2.set_ylim(-0.02, 1.02)
    a2.legend(fontsize=8)
    fig.suptitle(f"forgetting: {run.title}")
    return fig


def _plot_downstream(plt, run: _Run):
    """The GLUE probes' scores (CoLA's MCC, F1 where a task has it, else accuracy) at each checkpoint."""
    down = [c for c in run.ckpts if c.get("downstream")]
    if not down:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    tasks = [t for t in down[0]["downstream"] if isinstance(down[0]["downstream"][t], dict)]
    for task in tasks:
        key = "mcc" if task == "cola" else ("f1" if "f1" in down[0]["downstream"][task] else "accuracy")
        ax.plot([c["edits"] for c in down], [c["downstream"][task].get(key) for c in down], "o-", ms=3,
                label=f"{task} {key}")
    _mark(ax, run.disabling)
    ax.set_xlabel("edits applied")
    ax.set_ylabel("few-shot score")
    ax.legend(fontsize=8)
    ax.set_title(f"downstream: {run.title}", fontsize=9)
    return fig


def _plot_norms(plt, run: _Run):
    """Each edited weight's distance from the original, and each edit's update norm."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    ckpts = run.ckpts
    for name in ckpts[-1].get("norm_growth", {}):
        parts = name.split(".")
        label = next((f"layer {p}" for p in parts if p.isdigit()), name)
        a1.plot([c["edits"] for c in ckpts], [c["norm_growth"][name]["relative"] for c in ckpts], ".-", label=label)
    _mark(a1, run.disabling)
    a1.set_xlabel("edits applied")
    a1.set_ylabel("‖W − W₀‖ / ‖W₀‖")
    a1.legend(fontsize=8)
    if run.edits:
        a2.semilogy([e["edit"] for e in run.edits], [e["update_norm"] for e in run.edits], ".", ms=3)
        for x in run.disabling:
            a2.axvline(x, color="red", ls="--", lw=0.8, alpha=0.7)
        a2.set_xlabel("edit")
        a2.set_ylabel("‖ΔW‖ of the edit")
    fig.suptitle(f"weight growth: {run.title}")
    return fig
