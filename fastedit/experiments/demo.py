"""The embedded default job: a short sequential editing run on SmolLM2-135M.

Eight counterfactual requests written for fastedit (``fastedit/data/demo_requests.json``: the Eiffel
Tower in Rome, Mozart born in Chicago, ...) are applied one after another to SmolLM2-135M. After
each edit every request edited so far is re-scored (P(new) > P(true) on its prompt and paraphrase),
and the distance of each edited layer from its original weights is recorded. The run writes
``config.json``, ``steps.jsonl``, ``results.json`` and ``demo.png`` to its output folder and prints a
before/after table.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch

from ..engine import EditSession
from ..eval.metrics import compare_targets, target_logprobs
from ..models.loading import cache_dir, load_model
from ..requests import EditRequest

log = logging.getLogger(__name__)

__all__ = ["run_demo", "demo_requests", "default_stats_source"]

DEMO_REQUESTS = Path(__file__).resolve().parents[1] / "data" / "demo_requests.json"


def demo_requests() -> list[EditRequest]:
    return [EditRequest.from_dict(r, i) for i, r in enumerate(json.loads(DEMO_REQUESTS.read_text()))]


def default_stats_source() -> str:
    """``$FASTEDIT_STATS_SOURCE`` if set, else the Wikipedia sample that ships with fastedit
    (:data:`fastedit.bundled.WIKIPEDIA_SAMPLE`, 105 articles): the default jobs need no network."""
    from ..bundled import WIKIPEDIA_SAMPLE

    return os.environ.get("FASTEDIT_STATS_SOURCE") or str(WIKIPEDIA_SAMPLE)


def _score(model, tok, reqs: list[EditRequest]) -> list[dict]:
    rew = compare_targets(model, tok, [r.text for r in reqs], [r.target_new for r in reqs], [r.target_true for r in reqs])
    para_reqs = [r for r in reqs if r.paraphrase_prompts]
    para = compare_targets(
        model, tok, [r.paraphrase_prompts[0] for r in para_reqs], [r.target_new for r in para_reqs],
        [r.target_true for r in para_reqs],
    )
    neigh_reqs = [r for r in reqs if r.neighborhood_prompts and r.neighborhood_answer]
    neigh = target_logprobs(model, tok, [r.neighborhood_prompts[0] for r in neigh_reqs], [r.neighborhood_answer for r in neigh_reqs])
    out = []
    pi = {r.case_id: i for i, r in enumerate(para_reqs)}
    ni = {r.case_id: i for i, r in enumerate(neigh_reqs)}
    for i, r in enumerate(reqs):
        row = {
            "case_id": r.case_id,
            "p_new": float(rew["new"][i].exp()),
            "p_true": float(rew["true"][i].exp()),
            "success": bool(rew["success"][i]),
        }
        if r.case_id in pi:
            row["paraphrase_success"] = bool(para["success"][pi[r.case_id]])
        if r.case_id in ni:
            row["neighborhood_p"] = float(neigh[ni[r.case_id]].exp())
        out.append(row)
    return out


def run_demo(
    out_dir: str | Path = "runs/demo",
    method: str = "memit",
    model_name: str = "smollm2-135m",
    hparams=None,
    stats_source: str | None = None,
    stats_dir: str | Path | None = None,
    stats_max_len: int = 512,
    seed: int = 0,
) -> dict:
    """Run the demo and return its summary (also written to ``out_dir/results.json``). ``hparams``:
    a preset name, file or dict (default: the preset named after ``model_name``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats_source = stats_source or default_stats_source()
    stats_dir = Path(stats_dir) if stats_dir else cache_dir() / "stats"
    torch.manual_seed(seed)
    t_start = time.perf_counter()
    model, tok = load_model(model_name)
    reqs = demo_requests()
    session = EditSession(
        model, tok, method, hparams or model_name, seed=seed, stats_dir=stats_dir, stats_source=stats_source,
        stats_max_len=stats_max_len,
    )
    config = {
        "model": model_name,
        "method": method,
        "hparams": session.hp.to_dict(),
        "requests": str(DEMO_REQUESTS),
        "stats_source": str(stats_source),
        "stats_dir": str(stats_dir),
        "stats_max_len": stats_max_len,
        "seed": seed,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    before = _score(model, tok, reqs)
    steps = _edit_one_at_a_time(session, model, tok, reqs, out / "steps.jsonl")
    after = _score(model, tok, reqs)
    summary = _summary(model_name, method, reqs, before, after, steps, time.perf_counter() - t_start)
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_demo(steps, out / "demo.png", title=f"{method.upper()} on {model_name}, sequential edits")
    return summary


def plot_demo(steps: list[dict], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [s["edit"] for s in steps]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(x, [s["success_so_far"] for s in steps], "o-", label="edits so far that hold (rewrite)")
    ax1.plot(x, [s["paraphrase_so_far"] for s in steps], "s--", label="... on the paraphrase")
    ax1.set_ylim(-0.05, 1.05)
    ax1.set_xlabel("edits applied")
    ax1.set_ylabel("fraction with P(new) > P(true)")
    ax1.legend(fontsize=8)
    for name in steps[0]["relative_weight_change"]:
        short = name.replace(".weight", "").split(".")
        label = f"layer {short[-3]}" if len(short) >= 3 else name
        ax2.plot(x, [s["relative_weight_change"][name] for s in steps], ".-", label=label)
    ax2.set_xlabel("edits applied")
    ax2.set_ylabel("‖W − W₀‖ / ‖W₀‖")
    ax2.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_table(summary: dict) -> str:
    """The before/after table as text."""
    lines = [
        f"{'request':<44} {'new':<18} {'P(new)/P(true) before':>22} {'after':>12} {'holds':>6} {'paraphrase':>10}",
        "-" * 118,
    ]
    for row in summary["table"]:
        b, a = row["before"], row["after"]
        ratio_b = b["p_new"] / max(b["p_true"], 1e-30)
        ratio_a = a["p_new"] / max(a["p_true"], 1e-30)
        prompt = row["prompt"] if len(row["prompt"]) <= 43 else row["prompt"][:40] + "..."
        lines.append(
            f"{prompt:<44} {row['new']:<18} {ratio_b:>22.3g} {ratio_a:>12.3g} "
            f"{'yes' if a['success'] else 'no':>6} {'yes' if a.get('paraphrase_success') else 'no':>10}"
        )
    lines.append("-" * 118)
    lines.append(
        f"efficacy {summary['efficacy_before']:.0%} -> {summary['efficacy_after']:.0%}, paraphrase "
        f"{summary['paraphrase_after']:.0%}, mean |ΔP| on neighbourhood prompts {summary['neighborhood_p_change']:.3f}, "
        f"{summary['seconds_per_edit']:.1f} s per edit"
    )
    return "\n".join(lines)


def _edit_one_at_a_time(session: EditSession, model, tok, reqs: list, path: Path) -> list[dict]:
    """Apply ``reqs`` one edit each, scoring the edits so far after every one; one line per edit in
    ``path`` (``steps.jsonl``), the same dicts returned."""
    original = {k: w.detach().clone() for k, w in session.edited_weights().items()}
    steps = []
    with open(path, "w") as f:
        for i, r in enumerate(reqs):
            result = session.apply([r])
            scores = _score(model, tok, reqs[: i + 1])
            growth = {
                k: float((w.detach() - original[k]).norm() / original[k].norm())
                for k, w in session.edited_weights().items()
            }
            step = {
                "edit": i + 1,
                "case_id": r.case_id,
                "seconds": result.times["total"],
                "latest_success": scores[-1]["success"],
                "success_so_far": sum(s["success"] for s in scores) / len(scores),
                "paraphrase_so_far": sum(s.get("paraphrase_success", False) for s in scores) / len(scores),
                "relative_weight_change": growth,
            }
            steps.append(step)
            f.write(json.dumps(step) + "\n")
            log.info("edit %d/%d (%s): %.1f s, %d/%d edits hold", i + 1, len(reqs), r.case_id, step["seconds"],
                     sum(s["success"] for s in scores), len(scores))
    return steps


def _summary(model_name: str, method: str, reqs: list, before: list[dict], after: list[dict], steps: list[dict],
             total_seconds: float) -> dict:
    """``results.json``: the before/after table of every request and the run's averages."""
    table = [
        {"case_id": r.case_id, "prompt": r.text, "new": r.target_new, "true": r.target_true, "before": b, "after": a}
        for r, b, a in zip(reqs, before, after)
    ]
    n = len(reqs)
    return {
        "model": model_name,
        "method": method,
        "edits": n,
        "efficacy_before": sum(b["success"] for b in before) / n,
        "efficacy_after": sum(a["success"] for a in after) / n,
        "paraphrase_after": sum(a.get("paraphrase_success", False) for a in after) / n,
        "neighborhood_p_change": sum(
            abs(a.get("neighborhood_p", 0) - b.get("neighborhood_p", 0)) for a, b in zip(after, before)
        ) / n,
        "seconds_per_edit": sum(s["seconds"] for s in steps) / len(steps),
        "total_seconds": total_seconds,
        "table": table,
    }
