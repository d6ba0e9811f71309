"""Sequential scaling runs: N edits, each applied to the model the previous one left, measured as
they happen.

Every ``eval_every`` edits the run records, in ``checkpoints.jsonl``:

* the latest edits' scores (the edits since the previous checkpoint, on the current model);
* **forgetting**: every earlier edit re-scored on the current model (batched, in memory), both
  overall and by age;
* **downstream ability**: few-shot SST-2, MRPC, CoLA and RTE (accuracy, F1, MCC);
* **norm growth**: each edited layer's distance from its original weights;
* **disabling edits**: an edit whose update norm is far above the running median
  (``disable_factor`` times), or a collapse of generation entropy, flagged with the edit's id.

Each edit also gets a line in ``edits.jsonl`` (ids, update norms, time, whether it holds right after
it is applied). The run directory also holds the resolved configuration (``config.json``), a
checkpoint of the session (``session/``: the journal of low-rank factors, the edited weights, bit
for bit) written with every checkpoint line, ``summary.json`` and the plots (see :mod:`.plots`).

A run that is killed resumes from its last checkpoint: the session is restored, the log lines
written after it are dropped, and the remaining edits give the same results as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..engine import EditSession
from ..errors import InputError
from ..models.loading import cache_dir, load_model
from ..profiling import chrome_trace
from ..requests import EditRequest

log = logging.getLogger(__name__)

__all__ = ["RunConfig", "run_sequential", "load_requests"]


@dataclass
class RunConfig:
    """A sequential run. ``data``: a CounterFact file (either layout) or a zsRE file (``dataset``).
    ``downstream_n``: GLUE examples per task at each checkpoint (0 switches it off)."""

    model: str = "smollm2-135m"
    method: str = "memit"
    mode: str = "exact"
    data: str = ""
    dataset: str = "counterfact"
    edits: int = 100
    batch_size: int = 1
    eval_every: int = 10
    start: int = 0
    hparams: str | None = None
    stats_source: str | None = None
    stats_dir: str | None = None
    stats_max_len: int | None = 512
    downstream_n: int = 50
    downstream_tasks: tuple[str, ...] = ("sst2", "mrpc", "cola", "rte")
    fluency_prompts: int = 0
    disable_factor: float = 10.0
    entropy_collapse: float = 0.75
    seed: int = 0
    zsre_target: str = "answers0"
    dtype: str = "float32"
    device: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["downstream_tasks"] = list(self.downstream_tasks)
        return out


def load_requests(cfg: RunConfig) -> list[EditRequest]:
    """The run's requests: ``cfg.data`` if given (a file, ``hub`` or an ``hf:`` reference), else the
    loader's default (CounterFact: the 10,000 records that ship with fastedit; zsRE: kmeng01's file,
    downloaded once)."""
    from ..eval.datasets import load_counterfact, load_zsre

    n = cfg.edits * cfg.batch_size
    path = cfg.data or None
    if cfg.dataset == "counterfact":
        load = lambda count: load_counterfact(path, n=count, start=cfg.start)  # noqa: E731
    elif cfg.dataset == "zsre":
        load = lambda count: load_zsre(path, n=count, start=cfg.start, target=cfg.zsre_target)  # noqa: E731
    else:
        raise ValueError(f"unknown dataset {cfg.dataset!r}: counterfact or zsre")
    # a record whose new target is its true one edits nothing: skipped (with a note), and as many
    # more records read in its place
    count = n
    while True:
        records = load(count)
        kept = [r for r in records if not r.changes_nothing]
        if len(kept) >= n or len(records) < count:
            break
        count += n - len(kept)
    if len(kept) < len(records):
        skipped = [r.case_id for r in records if r.changes_nothing]
        log.warning("%s: skipping %d record(s) whose new target is the true one (case ids %s)",
                    cfg.dataset, len(skipped), skipped[:10])
    return kept[:n]


class _Scorer:
    """Scores requests on the current model: CounterFact or zsRE metrics. ``primary`` is the number an
    edit "holds" by: P(new) > P(true) on the rewrite prompt (CounterFact), or every target token the
    argmax (zsRE)."""

    def __init__(self, model, tok, dataset: str) -> None:
        self.model, self.tok, self.dataset = model, tok, dataset
        self.primary = "rewrite_argmax_acc" if dataset == "zsre" else "rewrite_success"

    def rows(self, reqs: list[EditRequest]) -> list[dict]:
        from ..eval import metrics

        if self.dataset == "zsre":
            rows = metrics.score_zsre(self.model, self.tok, reqs)
        else:
            rows = metrics.score_counterfact(self.model, self.tok, reqs)
        for row in rows:
            row["holds"] = bool(row[self.primary] >= 0.5)
        return rows

    @staticmethod
    def summary(rows: list[dict]) -> dict:
        from ..eval import metrics

        return metrics.summarize_scores(rows) if rows else {}


def _write_atomic(path: Path, text: str) -> None:
    """Write beside ``path`` and rename: a kill leaves the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _read_jsonl(path: Path) -> list[dict]:
    """The records of a log written by appends. A last line that does not parse is what a kill or a
    full disk during an append leaves: it is dropped (its edit is redone). A bad line before the last
    one is damage this run did not cause: :class:`~fastedit.errors.InputError` naming it."""
    lines = [(i, l) for i, l in enumerate(path.read_text().splitlines(), 1) if l.strip()]
    out = []
    for j, (i, line) in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if j + 1 < len(lines):
                raise InputError(f"{path}:{i}: not a JSON line ({e}); the run directory is damaged") from None
            log.warning("%s:%d: dropping a half-written last line (an interrupted append)", path, i)
    return out


def _truncate_jsonl(path: Path, keep) -> list[dict]:
    """Keep the lines for which ``keep(record)`` is true (a torn last line is dropped); return them.
    The file is replaced by a rename, so a kill during the rewrite leaves the old or the new one."""
    if not path.exists():
        return []
    kept = [r for r in _read_jsonl(path) if keep(r)]
    _write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def _batches(cfg: RunConfig) -> list[list]:
    """The run's ``cfg.edits`` batches of ``cfg.batch_size`` requests, in order; an error that names the
    data when it holds too few records."""
    reqs = load_requests(cfg)
    if len(reqs) < cfg.edits * cfg.batch_size:
        hint = " (the shipped CounterFact sample; --data hub reads all 21,919 records)" if not cfg.data else ""
        raise ValueError(f"{cfg.data or cfg.dataset}{hint}: {len(reqs) + cfg.start} records, the run needs "
                         f"{cfg.edits * cfg.batch_size} from record {cfg.start}")
    return [reqs[i * cfg.batch_size : (i + 1) * cfg.batch_size] for i in range(cfg.edits)]


def run_sequential(cfg: RunConfig, out_dir: str | Path, progress: bool = True, stop_after: int | None = None,
                   time_limit: float | None = None, device_map=None, report_to: str | None = None,
                   profile: str | Path | None = None) -> dict:
    """Run (or resume) a sequential run into ``out_dir`` and return its summary. ``stop_after``
    ends the run early after that many edits (as an interruption would; for tests). ``time_limit``
    (seconds of this call) ends it at the first checkpoint after that time; the same command run
    again goes on from there.

    What does not change the results may differ between the calls that make one run:
    ``device_map`` (placement, passed to ``from_pretrained``), ``report_to`` (``tensorboard`` or
    ``wandb`` beside the JSONL logs, see :mod:`.reporting`) and ``profile`` (a Chrome trace of this
    call's edits and checkpoints written to that path)."""
    from ..eval.datasets import default_data_dir
    from ..experiments.demo import default_stats_source
    from . import plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "config.json"
    _check_same_run(cfg, out)
    from .reporting import make_reporter, require_reporter

    require_reporter(report_to)  # a missing tracker package fails before the model is loaded
    torch.manual_seed(cfg.seed)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_model(cfg.model, dtype=cfg.dtype, device=device, device_map=device_map)
    batches = _batches(cfg)
    stats_source = cfg.stats_source or default_stats_source()
    stats_dir = cfg.stats_dir or str(cache_dir() / "stats")
    session = _open_session(cfg, out, model, tok, stats_source, stats_dir)
    done = len(session.journal)
    runtime = {"device_map": device_map, "report_to": report_to or "none", "profile": str(profile) if profile else None}
    _write_atomic(cfg_path, json.dumps({"run": cfg.to_dict(), "hparams": session.hp.to_dict(), "stats_source": str(stats_source),
                                        "stats_dir": str(stats_dir), "runtime": runtime}, indent=2) + "\n")
    edit_log = _truncate_jsonl(out / "edits.jsonl", lambda r: r["edit"] <= done)
    ckpt_log = _truncate_jsonl(out / "checkpoints.jsonl", lambda r: r["edits"] <= done)

    scorer = _Scorer(model, tok, cfg.dataset)
    base = {k: w.detach().clone() for k, w in session.edited_weights().items()} if done == 0 else {
        k: session._base[k].to(w.device) for k, w in session.edited_weights().items()
    }
    reporter = make_reporter(report_to, out, {"run": cfg.to_dict(), "hparams": session.hp.to_dict()}, done)
    bar = tqdm(total=cfg.edits, initial=done, unit="edit", disable=not progress, desc=f"{cfg.method} {cfg.mode}")
    stop = cfg.edits if stop_after is None else min(cfg.edits, stop_after)
    try:
        with chrome_trace(profile):
            if done == 0 and not ckpt_log:  # a run stopped before its first save has logged it already
                first = _checkpoint(cfg, session, scorer, [], 0, base, [], default_data_dir(), time.perf_counter(), 0.0)
                _log_checkpoint(out, ckpt_log, first, reporter)
            seconds = sum(e["seconds"] for e in edit_log)
            t_start = time.perf_counter()
            for i in range(done, stop):
                entry = _edit_and_log(cfg, session, scorer, batches[i], i, edit_log, out, reporter)
                seconds += entry["seconds"]
                bar.update(1)
                bar.set_postfix(edits_per_s=f"{(i + 1 - done) / (time.perf_counter() - t_start):.2f}")
                if (i + 1) % cfg.eval_every == 0 or i + 1 == cfg.edits:
                    edited = [r for b in batches[: i + 1] for r in b]
                    point = _checkpoint(cfg, session, scorer, edited, i + 1, base, edit_log, default_data_dir(),
                                        time.perf_counter(), seconds)
                    _flag_entropy_collapse(cfg, point, ckpt_log)
                    # the log line first, then the session: a run killed in between redoes these edits and
                    # drops the line, so every line on disk belongs to a saved session state
                    _log_checkpoint(out, ckpt_log, point, reporter)
                    _save_session(session, out)
                    if time_limit is not None and time.perf_counter() - t_start > time_limit and i + 1 < stop:
                        log.warning("time limit of %.0f s reached after %d edits; run the same command again to go on",
                                    time_limit, i + 1)
                        break
    finally:
        if reporter is not None:
            reporter.close()
    bar.close()
    summary = _summary(cfg, ckpt_log, edit_log, seconds)
    _write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    plots.plot_run(out)
    return summary


def _edit_and_log(cfg: RunConfig, session: EditSession, scorer, batch, i: int, edit_log: list[dict], out: Path,
                  reporter) -> dict:
    """Apply edit ``i + 1`` (one batch), score it on the model it leaves, flag it when its update norm is
    ``disable_factor`` × the running median of the earlier ones; append its ``edits.jsonl`` line."""
    res = session.apply(batch)
    now_rows = scorer.rows(batch)
    norm = sum(v**2 for v in res.update_norms.values()) ** 0.5
    earlier = [e["update_norm"] for e in edit_log]
    median = statistics.median(earlier) if earlier else None
    disabling = bool(median and norm > cfg.disable_factor * median)
    entry = {
        "edit": i + 1,
        "edit_id": res.edit_id,
        "case_ids": res.ids,
        "seconds": res.times["total"],
        "update_norm": norm,
        "update_norms": res.update_norms,
        "holds": [r["holds"] for r in now_rows],
        "disabling": disabling,
    }
    edit_log.append(entry)
    with open(out / "edits.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")
    if reporter is not None:
        reporter.log_edit(entry)
    if disabling:
        log.warning("edit %d (%s): update norm %.3g is %.0f× the running median: a disabling edit", i + 1, res.ids, norm, norm / median)
    return entry


def _log_checkpoint(out: Path, ckpt_log: list[dict], point: dict, reporter) -> None:
    ckpt_log.append(point)
    with open(out / "checkpoints.jsonl", "a") as f:
        f.write(json.dumps(point) + "\n")
    if reporter is not None:
        reporter.log_checkpoint(point)


def _save_session(session: EditSession, out: Path) -> None:
    """Checkpoint the session into ``out/session``: each save writes only what changed since the last
    one and swaps it in with one rename, so a kill at any moment leaves one complete session."""
    session.save(out / "session")


def _check_same_run(cfg: RunConfig, out: Path) -> None:
    """``out`` may hold the same run, to resume or extend to more edits; anything else is another run.
    Options added after a run was started take their defaults."""
    cfg_path = out / "config.json"
    if not cfg_path.exists():
        return
    saved = {**json.loads(json.dumps(RunConfig().to_dict())), **json.loads(cfg_path.read_text())["run"]}
    now = json.loads(json.dumps(cfg.to_dict()))
    diff = sorted(k for k in set(saved) | set(now) if k != "edits" and saved.get(k) != now.get(k))
    if diff:
        raise ValueError(f"{out} holds a run with a different configuration (differs in {diff}); use another --out")


def _open_session(cfg: RunConfig, out: Path, model, tok, stats_source, stats_dir) -> EditSession:
    """The run's session: restored from ``out/session`` when the run is resumed, else a new one."""
    from ..models.adapters import get_adapter

    max_len = min(cfg.stats_max_len or 10**9, get_adapter(model).max_positions(model))
    session_opts = dict(stats_dir=stats_dir, stats_source=stats_source, stats_max_len=max_len, progress=False)
    session_dir = out / "session"
    if not (session_dir / "session.json").exists() and (out / "session.old" / "session.json").exists():
        (out / "session.old").rename(session_dir)  # a run of an earlier version killed while it swapped folders
    if (session_dir / "session.json").exists():
        session = EditSession.load(session_dir, model, tok, **session_opts)
        log.info("resuming %s after %d edits", out, len(session.journal))
        return session
    return EditSession(model, tok, cfg.method, cfg.hparams or cfg.model, mode=cfg.mode, seed=cfg.seed, **session_opts)


def _checkpoint(cfg, session, scorer, edited, n_done, base, edit_log, data_dir, now, seconds) -> dict:
    from ..eval import downstream, metrics

    point: dict[str, Any] = {"edits": n_done, "requests": len(edited), "seconds": seconds}
    t0 = time.perf_counter()
    if edited:
        rows = scorer.rows(edited)
        point["all_edits"] = scorer.summary(rows)
        recent = rows[-cfg.eval_every * cfg.batch_size :]
        point["latest_edits"] = scorer.summary(recent)
        # forgetting by age: the edits in ten equal slices, oldest first
        slices = max(1, min(10, len(rows)))
        size = len(rows) / slices
        point["by_age"] = [
            scorer.summary(rows[int(j * size) : int((j + 1) * size)]).get(scorer.primary) for j in range(slices)
        ]
        point["holds"] = [r["holds"] for r in rows]
    if cfg.downstream_n:
        glue = downstream.evaluate_glue(
            session.model, session.tok, data_dir=data_dir / "glue" if data_dir else None, tasks=cfg.downstream_tasks,
            n_per_task=cfg.downstream_n, seed=cfg.seed,
        )
        # the scalar metrics only; per-example lists would swell every line
        point["downstream"] = {t: {k: v for k, v in m.items() if isinstance(v, (int, float))} for t, m in glue.items()}
    if cfg.fluency_prompts:
        prompts = [r.text for r in load_requests(RunConfig(**{**cfg.to_dict(), "edits": cfg.fluency_prompts, "batch_size": 1,
                                                              "downstream_tasks": tuple(cfg.downstream_tasks)}))]
        point["generation_entropy"] = metrics.generation_entropy(session.model, session.tok, prompts, seed=cfg.seed)["ngram_entropy"]
    growth = {}
    for name, w in session.edited_weights().items():
        diff = (w.detach().double() - base[name].to(w.device).double()).norm()
        growth[name] = {"distance": float(diff), "relative": float(diff / base[name].double().norm())}
    point["norm_growth"] = growth
    point["disabling_edits"] = [e["edit"] for e in edit_log if e["disabling"]]
    point["eval_seconds"] = time.perf_counter() - t0
    return point


def _flag_entropy_collapse(cfg: RunConfig, point: dict, earlier: list[dict]) -> None:
    """Generation entropy below ``cfg.entropy_collapse`` × its value before the first edit marks the
    edits since the previous checkpoint (the window the collapse happened in) as disabling."""
    ent = point.get("generation_entropy")
    first = next((c.get("generation_entropy") for c in earlier if c.get("generation_entropy")), None)
    if ent is None or not first or ent >= cfg.entropy_collapse * first:
        return
    prev = earlier[-1]["edits"] if earlier else 0
    point["entropy_collapse"] = {"ratio": ent / first, "edits": [prev + 1, point["edits"]]}
    log.warning("generation entropy fell to %.2f of its initial value between edits %d and %d: a disabling edit "
                "in that window", ent / first, prev + 1, point["edits"])


def _summary(cfg: RunConfig, ckpts: list[dict], edits: list[dict], seconds: float) -> dict:
    last = ckpts[-1] if ckpts else {}
    first = ckpts[0] if ckpts else {}
    return {
        "config": cfg.to_dict(),
        "edits": len(edits),
        "requests": len(edits) * cfg.batch_size,
        "edit_seconds": seconds,
        "edits_per_s": len(edits) / seconds if seconds else None,
        "final": {k: last.get(k) for k in ("all_edits", "latest_edits", "downstream", "norm_growth", "generation_entropy")},
        "initial_downstream": first.get("downstream"),
        "disabling_edits": [e["edit"] for e in edits if e["disabling"]],
        "entropy_collapses": [c["entropy_collapse"] for c in ckpts if "entropy_collapse" in c],
        "holds_right_after_edit": (
            sum(sum(e["holds"]) for e in edits) / max(1, sum(len(e["holds"]) for e in edits))
        ),
    }
