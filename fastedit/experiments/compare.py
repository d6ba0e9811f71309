"""Several sequential runs side by side: one figure and one table, from their run folders.

``compare_runs([RUN_A, RUN_B, ...], OUT)`` reads each run's ``config.json`` and ``checkpoints.jsonl``
(as :func:`fastedit.experiments.sequential.run_sequential` writes them; a run still going is read as
far as it got) and writes into ``OUT``:

* ``compare.png``: against the number of requests edited (edits × batch size, so runs of different
  batch sizes share an axis), efficacy of the latest edits, of all edits so far
  and of the oldest tenth of them (forgetting), paraphrase and neighbourhood scores over all edits,
  generation entropy (fluency), the mean few-shot GLUE score and the mean relative weight growth of
  the edited layers;
* ``compare.md``: a table of every run's last checkpoint, and of each checkpoint all runs reached.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

__all__ = ["RunRecord", "read_run", "compare_runs", "comparison_table"]

# (label, function of a checkpoint → value or None), in the figure's and the table's order
PANELS = (
    ("efficacy, latest edits", lambda c: _score(c, "latest_edits", "rewrite_success")),
    ("efficacy, all edits so far", lambda c: _score(c, "all_edits", "rewrite_success")),
    ("efficacy, oldest tenth of the edits", lambda c: (c.get("by_age") or [None])[0]),
    ("paraphrase, all edits", lambda c: _score(c, "all_edits", "paraphrase_success")),
    ("neighbourhood, all edits", lambda c: _score(c, "all_edits", "neighborhood_success")),
    ("generation entropy", lambda c: c.get("generation_entropy")),
    ("GLUE, mean few-shot score", lambda c: _glue_mean(c)),
    ("‖W − W₀‖ / ‖W₀‖, mean over layers", lambda c: _growth(c)),
)


def _score(c: dict, group: str, metric: str):
    scores = c.get(group) or {}
    if metric not in scores and metric == "rewrite_success":  # zsRE runs
        metric = "rewrite_argmax_acc"
    return scores.get(metric)


def _glue_mean(c: dict):
    """The mean over the GLUE tasks of each one's usual metric (CoLA: MCC; F1 where reported, else
    accuracy), as the run's own downstream plot shows them."""
    tasks = {t: m for t, m in (c.get("downstream") or {}).items() if isinstance(m, dict)}
    vals = [m.get("mcc") if t == "cola" else m.get("f1", m.get("accuracy")) for t, m in tasks.items()]
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def _growth(c: dict):
    rel = [g["relative"] for g in (c.get("norm_growth") or {}).values()]
    return sum(rel) / len(rel) if rel else None


@dataclass
class RunRecord:
    """One run folder: its label, configuration and checkpoints (oldest first)."""

    path: Path
    label: str
    config: dict
    checkpoints: list[dict]

    def requests(self, c: dict) -> int:
        """The requests edited by checkpoint ``c`` (its ``edits`` are batches)."""
        return c.get("requests", c["edits"] * int(self.config.get("batch_size", 1)))

    def series(self, value) -> tuple[list[int], list[float]]:
        pts = [(self.requests(c), value(c)) for c in self.checkpoints]
        pts = [(x, y) for x, y in pts if y is not None]
        return [x for x, _ in pts], [y for _, y in pts]


def read_run(path: str | Path) -> RunRecord:
    """A run folder's record; :class:`InputError` when it holds no run."""
    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text())["run"]
        lines = (path / "checkpoints.jsonl").read_text().splitlines()
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{path}: not a fastedit run folder (config.json, checkpoints.jsonl: {e})") from None
    ckpts = []
    for i, line in enumerate(lines):
        if line.strip():
            try:
                ckpts.append(json.loads(line))
            except ValueError:
                if i < len(lines) - 1:  # only the last line of a run killed mid-write may be partial
                    raise InputError(f"{path / 'checkpoints.jsonl'}: line {i + 1} is not JSON") from None
    label = f"{config.get('method', '?')} ({config.get('mode', '?')}, batch {config.get('batch_size', 1)})"
    return RunRecord(path, label, config, ckpts)


def comparison_table(runs: list[RunRecord]) -> str:
    """A markdown table: each run's last checkpoint, then each number of requests edited that every run
    reached a checkpoint at."""
    head = "| run | requests edited | " + " | ".join(name for name, _ in PANELS) + " |"
    rule = "|" + "---|" * (len(PANELS) + 2)

    def row(run: RunRecord, c: dict) -> str:
        vals = [fn(c) for _, fn in PANELS]
        return f"| {run.label} | {run.requests(c)} | " + " | ".join("–" if v is None else f"{v:.3f}" for v in vals) + " |"

    lines = ["Last checkpoint of each run:", "", head, rule]
    lines += [row(r, r.checkpoints[-1]) for r in runs if r.checkpoints]
    common = sorted(set.intersection(*[{r.requests(c) for c in r.checkpoints} for r in runs])) if runs else []
    if common:
        lines += ["", "At the checkpoints every run reached:", "", head, rule]
        for n in common:
            lines += [row(r, next(c for c in r.checkpoints if r.requests(c) == n)) for r in runs]
    return "\n".join(lines) + "\n"


def compare_runs(run_dirs: list[str | Path], out: str | Path, title: str | None = None) -> list[Path]:
    """Write ``compare.png`` and ``compare.md`` for ``run_dirs`` into ``out``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [read_run(p) for p in run_dirs]
    if not runs:
        raise InputError("no run folders to compare")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 4, figsize=(17, 7.5))
    for ax, (name, fn) in zip(axes.flat, PANELS):
        for run in runs:
            x, y = run.series(fn)
            if x:
                ax.plot(x, y, "o-", ms=2.5, label=run.label)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("requests edited")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(runs), 4), fontsize=9)
    models = sorted({str(r.config.get("model", "")) for r in runs})
    fig.suptitle(title or f"sequential editing of {', '.join(models)}")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    paths = [out / "compare.png", out / "compare.md"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)
    paths[1].write_text(comparison_table(runs))
    return paths
