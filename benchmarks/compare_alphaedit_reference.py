"""Side by side: sequential AlphaEdit batches through jianghoucheng/AlphaEdit's own
``apply_AlphaEdit_to_model`` and through fastedit's ``EditSession(method="alphaedit")`` (exact mode).

    python benchmarks/compare_alphaedit_reference.py --reference-dir ../ref/AlphaEdit \\
        [--model random:llama | smollm2-135m] [--batches 1 2 1] [--out FILE.json]

``--reference-dir`` is a checkout of jianghoucheng/AlphaEdit, fetched beside the project and never
committed. Both sides get the same float32 model, context templates, batches of the shipped demo
requests and statistics: a random model gets synthetic statistics, the threshold in the middle of
their spectrum (small hyperparameters as ``compare_reference.py``'s, L2 10); a named model gets its
AlphaEdit preset and the statistics of fastedit's cache. The reference is given what its
``experiments/evaluate.py`` builds before its loop: P per layer by its ``get_project`` formula (SVD
of the float32 C, U_r U_rᵀ over the singular values below the threshold) on the same C, and a zero
``cache_c``, which it returns grown after each batch. It runs unchanged under the run-time shims of
``reference_shims.py``. Prints, per batch, the relative Frobenius error of every ΔW and both times.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import reference_shims as rs  # noqa: E402
from compare_reference import load_model, rel_error, small_hparams  # noqa: E402

from fastedit.engine import EditSession  # noqa: E402
from fastedit.methods.alphaedit import AlphaEditHyperParams  # noqa: E402
from fastedit.models import get_adapter  # noqa: E402
from fastedit.requests import EditRequest  # noqa: E402
from fastedit.stats.store import default_stats_dir  # noqa: E402
from fastedit.stats.synthetic import write_synthetic_second_moments  # noqa: E402

log = logging.getLogger("compare_alphaedit_reference")
TEMPLATES = [["{}"], ["The weather was cold. {}", "Because of this. {}", "I think that. {}"]]


def hparams_and_stats(model, adapter, spec: str, workdir: Path, stats_dir: Path | None):
    """(hyperparameters, stats_dir): the preset and ``stats_dir`` for a named model; small
    hyperparameters and synthetic statistics (threshold mid-spectrum) for a random one."""
    if not spec.startswith("random:"):
        return AlphaEditHyperParams.preset(spec).resolve(adapter, model), stats_dir
    hp = dict(small_hparams("memit", model, adapter), mom2_n_samples=1000, L2=10.0)
    stats = workdir / "stats"
    paths = write_synthetic_second_moments(model, AlphaEditHyperParams.from_dict(
        {"layers": hp["layers"], "mom2_n_samples": 1000}), stats, n_vectors=400)
    from fastedit.methods.plain import read_second_moment

    s = torch.linalg.svdvals(read_second_moment(paths[hp["layers"][0]]).double()).sort().values
    hp["nullspace_threshold"] = float(s[len(s) // 2 - 1] + s[len(s) // 2]) / 2
    return AlphaEditHyperParams.from_dict(hp), stats


def reference_projection(session) -> torch.Tensor:
    """P (n_layers, d_ff, d_ff) as the reference's get_project computes it, from the session's C."""
    hp = session.hp
    session.stats.ensure(hp.layers)
    out = []
    for layer in hp.layers:
        u, s, _ = torch.linalg.svd(session.stats.second_moment(layer).float().cpu(), full_matrices=False)
        idx = (s < hp.nullspace_threshold).nonzero(as_tuple=True)[0]
        out.append(u[:, idx] @ u[:, idx].T)
    return torch.stack(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference-dir", type=Path, required=True)
    ap.add_argument("--model", default="random:llama")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 1], help="sizes of the sequential batches")
    ap.add_argument("--stats-dir", type=Path, default=None, help="statistics cache of a named model "
                    "(default: $FASTEDIT_STATS_DIR, else data/stats)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    model, tok, label = load_model(args.model)
    adapter = get_adapter(model)
    workdir = Path(tempfile.mkdtemp(prefix="alphaedit_ref_"))
    shutil.copy(args.reference_dir / "globals.yml", workdir / "globals.yml")
    ref = rs.import_reference(args.reference_dir, workdir)
    with rs._working_directory(workdir):
        ae = importlib.import_module("AlphaEdit.AlphaEdit_main")
    hp, stats_dir = hparams_and_stats(model, adapter, args.model, workdir, (args.stats_dir or default_stats_dir()).resolve())
    demo = json.loads((Path(__file__).resolve().parents[1] / "fastedit/data/demo_requests.json").read_text())
    requests = [EditRequest.from_dict(r, index=i) for i, r in enumerate(demo)]
    ref_model, fe_model = copy.deepcopy(model), copy.deepcopy(model)
    session = EditSession(fe_model, tok, "alphaedit", hp, templates=TEMPLATES, stats_dir=stats_dir, progress=False)
    P = reference_projection(session)
    cache_c = torch.zeros_like(P)
    fields = set(ae.AlphaEditHyperParams.__dataclass_fields__)
    ref_hp = ae.AlphaEditHyperParams(**{k: v for k, v in {**session.hp.to_dict(), "model_name": label}.items() if k in fields})
    names = [f"{session.hp.rewrite_module_tmp.format(l)}.weight" for l in session.hp.layers]
    blocks = [ref_model.get_submodule(session.hp.layer_module_tmp.format(i)) for i in range(adapter.num_layers(ref_model))]
    rows, start = [], 0
    for size in args.batches:
        batch = [requests[(start + j) % len(requests)] for j in range(size)]
        start += size
        before = {n: (ref_model.get_parameter(n).detach().clone(), fe_model.get_parameter(n).detach().clone()) for n in names}
        ae.CONTEXT_TEMPLATES_CACHE = [list(g) for g in TEMPLATES]
        t = time.perf_counter()
        with rs.reference_shims(ref, ref_model, blocks, workdir, workdir / "reference.log"):
            ref_requests = [dict(r.to_reference_dict(), case_id=j) for j, r in enumerate(batch)]
            _, cache_c = ae.apply_AlphaEdit_to_model(ref_model, tok, ref_requests, ref_hp, cache_c=cache_c, P=P)
        t_ref = time.perf_counter() - t
        t = time.perf_counter()
        session.apply(batch)
        t_fe = time.perf_counter() - t
        errors = {n: rel_error(fe_model.get_parameter(n).detach() - before[n][1], ref_model.get_parameter(n).detach() - before[n][0])
                  for n in names}
        rows.append({"batch": len(rows), "size": size, "rel_errors": errors, "reference_s": t_ref, "fastedit_s": t_fe})
        log.info("batch %d (%d request(s)): max rel error %.2e, reference %.2f s, fastedit %.2f s",
                 len(rows) - 1, size, max(errors.values()), t_ref, t_fe)
    result = {"model": label, "hparams": session.hp.to_dict(), "rows": rows,
              "max_rel_error": max(max(r["rel_errors"].values()) for r in rows)}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("model", "max_rel_error")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
