"""Side by side: EasyEdit's own editor and ``fastedit.easyedit`` on the same edits, from the same
EasyEdit hparams YAML files.

    PYTHONPATH=. EASYEDIT_VENV/bin/python benchmarks/compare_easyedit.py --easyedit-dir ../ref/EasyEdit \\
        [--model random:gpt2 | smollm2-135m] [--method rome|memit|both] [--requests 3] [--out FILE.json]

``--easyedit-dir`` is a copy of zjunlp/EasyEdit (its ``easyeditor`` package and ``hparams/`` folder),
kept outside the repository and never committed; the Python running this script must have what
EasyEdit imports installed. EasyEdit runs unmodified and is imported whole, except for two packages
its multimodal code imports at import time (BLIP-2's vision tower and image processors):
``torchvision`` and ``timm``. torchvision cannot run with the CPU build of torch here (PyPI has only
CUDA-linked wheels and no source distribution) and timm needs it, so ``--absent torchvision,timm``
(the default) puts placeholder modules in their place that raise on any use; ROME, MEMIT, the editor
and the evaluation never touch them, and the results list them. For each method the script

1. saves the float32 model and its tokenizer into a scratch folder whose name EasyEdit's loader
   recognises (``gpt2-random``; SmolLM2, a Llama model, as ``llama-smollm2-135m``), so both editors
   load the same files from ``model_name``;
2. writes one YAML file from EasyEdit's own (``hparams/ROME/gpt2-xl.yaml``, ``hparams/MEMIT/gpt2-xl.yaml``;
   ``llama3.2-3b.yaml`` for SmolLM2), changing only what the model's size and this machine force:
   ``model_name``, ``device: cpu``, ``stats_dir``, ``layers``, ``v_loss_layer`` and ``mom2_n_samples``;
3. computes the MEMIT statistics once with fastedit, in EasyEdit's cache layout and file name, so both
   read the same file;
4. runs ``BaseEditor.edit(prompts=, target_new=, subject=, ground_truth=, rephrase_prompts=,
   locality_inputs=, portability_inputs=, sequential_edit=True)`` with EasyEdit's classes, then with
   fastedit's given EasyEdit's context templates (which EasyEdit samples itself at its first edit);
5. reports, for every edited weight, the largest absolute difference of the final weights and the
   relative Frobenius error of the updates ΔW = W_after − W_before, and every metric in EasyEdit's
   layout that differs between the two (pre/post rewrite, rephrase, locality and portability).

Requests are CounterFact records (EasyEdit's layout: prompt with the subject written out, rephrase
and locality prompts); each one's portability probe is its rephrase prompt with the new target.
The results go to ``--out`` (JSON) and a ``.txt`` beside it; the exit status is 1 when a weight
differs by more than ``--tolerance`` (default 1e-4) or a metric differs.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from compare_reference import load_model, machine_description, rel_error  # noqa: E402

DEFAULT_REQUESTS = REPO.parent / "shared" / "data" / "counterfact" / "counterfact-edit.json"
DEFAULT_STATS_SOURCE = REPO.parent / "shared" / "data" / "wikipedia" / "enwiki_sample.jsonl"

log = logging.getLogger("compare_easyedit")

# EasyEdit's file used for each (method, family) and the settings this model forces.
EASYEDIT_FILES = {("rome", "gpt2"): "ROME/gpt2-xl.yaml", ("memit", "gpt2"): "MEMIT/gpt2-xl.yaml",
                  ("rome", "llama"): "ROME/llama3.2-3b.yaml", ("memit", "llama"): "MEMIT/llama3.2-3b.yaml"}


class _Absent:
    """Stands for anything taken from a package that is not installed: attribute access gives another
    placeholder, a call raises."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> "_Absent":
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Absent(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self._name}: not installed here (placeholder of compare_easyedit.py)")


class _AbsentFinder:
    """A meta-path finder that answers imports of ``names`` (and their submodules) with placeholder
    modules."""

    def __init__(self, names):
        self.names = tuple(names)

    def find_spec(self, fullname, path=None, target=None):
        import importlib.machinery

        if fullname.split(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        import types

        mod = types.ModuleType(spec.name)
        mod.__path__ = []
        mod.__getattr__ = lambda attr: _Absent(f"{spec.name}.{attr}")
        return mod

    def exec_module(self, module):
        pass


def save_model(spec: str, workdir: Path):
    """(folder, family): the model saved where EasyEdit's name-based loader takes it."""
    model, tok, _ = load_model(spec)
    family = "gpt2" if model.config.model_type == "gpt2" else "llama"
    name = "gpt2-random" if spec.startswith("random:") else "llama-" + Path(spec).name
    folder = workdir / "models" / name
    if not (folder / "config.json").exists():
        model.config._name_or_path = str(folder)
        model.save_pretrained(folder, safe_serialization=True)
        tok.save_pretrained(folder)
    return folder, family, model.config.num_hidden_layers


def write_hparams(easyedit_dir: Path, method: str, family: str, folder: Path, n_layers: int, workdir: Path,
                  n_samples: int) -> Path:
    """EasyEdit's own YAML with only the model-forced keys changed; returns the new file."""
    import yaml

    src = easyedit_dir / "hparams" / EASYEDIT_FILES[(method, family)]
    data = yaml.safe_load(src.read_text())
    first = max(1, n_layers // 4) if family == "gpt2" else 4
    layers = [first] if method == "rome" else ([first, first + 1] if family == "gpt2" else [4, 5, 6, 7, 8])
    data.update(model_name=str(folder), device="cpu", stats_dir=str(workdir / "stats"), layers=layers,
                v_loss_layer=n_layers - 1, mom2_n_samples=n_samples)
    out = workdir / "hparams" / f"{method.upper()}-{folder.name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def load_requests(path: Path, n: int) -> dict:
    """``edit``'s keyword arguments for the first ``n`` CounterFact records."""
    recs = json.loads(path.read_text())[:n]
    return dict(
        prompts=[r["prompt"] for r in recs], target_new=[r["target_new"] for r in recs],
        subject=[r["subject"] for r in recs], ground_truth=[r["ground_truth"] for r in recs],
        rephrase_prompts=[r["rephrase_prompt"] for r in recs],
        locality_inputs={"neighborhood": {"prompt": [r["locality_prompt"] for r in recs],
                                          "ground_truth": [r["locality_ground_truth"] for r in recs]}},
        portability_inputs={"rephrase_new": {"prompt": [r["rephrase_prompt"] for r in recs],
                                             "ground_truth": [r["target_new"] for r in recs]}},
    )


def write_stats(hp_path: Path, folder: Path, method: str, args) -> None:
    """MEMIT's statistics by fastedit, named as EasyEdit names them (the model folder's last part)."""
    import fastedit
    from fastedit.hparams import load_hparams
    from fastedit.models import get_adapter
    from fastedit.stats.store import SecondMomentStore

    hp = load_hparams(method, hp_path)
    if not hp.mom2_adjustment:
        return
    model, tok = fastedit.load_model(str(folder))
    adapter = get_adapter(model)
    max_len = min(args.stats_max_len, adapter.max_positions(model))
    SecondMomentStore(model, tok, adapter, hp, source=args.stats_source, model_name=folder.name,
                      max_len=max_len, progress=False).ensure(hp.layers)


def run_side(side: str, method: str, hp_path: Path, kwargs: dict, templates=None):
    """One editor's run: (metrics, {weight: (before, after)}, seconds, the templates it used)."""
    if side == "easyedit":
        import easyeditor

        classes = {"rome": easyeditor.ROMEHyperParams, "memit": easyeditor.MEMITHyperParams}
        editor_cls = easyeditor.BaseEditor
    else:
        import fastedit.easyedit as fe

        classes = {"rome": fe.ROMEHyperParams, "memit": fe.MEMITHyperParams}
        editor_cls = fe.BaseEditor
    hp = classes[method].from_hparams(str(hp_path))
    opts = {} if side == "easyedit" else {"templates": templates, "progress": False}
    if side == "easyedit":
        _reset_easyedit_state()
    editor = editor_cls.from_hparams(hp, **opts)
    names = [f"{hp.rewrite_module_tmp.format(l)}.weight" for l in hp.layers]
    before = {n: editor.model.get_parameter(n).detach().clone() for n in names}
    t0 = time.perf_counter()
    metrics, model, _ = editor.edit(**copy.deepcopy(kwargs), sequential_edit=True, verbose=False)
    seconds = time.perf_counter() - t0
    weights = {n: (before[n], model.get_parameter(n).detach().clone()) for n in names}
    if side == "easyedit":
        from easyeditor.models.memit import memit_main
        from easyeditor.models.rome import rome_main

        templates = (rome_main if method == "rome" else memit_main).CONTEXT_TEMPLATES_CACHE
    return metrics, weights, seconds, templates


def _reset_easyedit_state() -> None:
    """EasyEdit keeps templates and statistics in module globals: start each run clean."""
    from easyeditor.models.memit import memit_main
    from easyeditor.models.rome import compute_u, rome_main

    rome_main.CONTEXT_TEMPLATES_CACHE = None
    memit_main.CONTEXT_TEMPLATES_CACHE = None
    memit_main.COV_CACHE.clear()
    compute_u.inv_mom2_cache.clear()


def metric_differences(ours: list, theirs: list, path: str = "") -> list[str]:
    """Every numeric leaf (pre/post accuracies, locality token lists) that differs, as ``path: a != b``."""
    out = []

    def walk(a, b, p):
        if isinstance(b, dict):
            for k in b:
                if k in ("metric_meta", "requested_rewrite", "time"):
                    continue
                if not isinstance(a, dict) or k not in a:
                    out.append(f"{p}.{k}: missing in fastedit")
                else:
                    walk(a[k], b[k], f"{p}.{k}")
        elif isinstance(b, (list, tuple)):
            if not isinstance(a, (list, tuple)) or len(a) != len(b):
                out.append(f"{p}: {a!r} != {b!r}")
            else:
                for i, (x, y) in enumerate(zip(a, b)):
                    walk(x, y, f"{p}[{i}]")
        elif isinstance(b, (int, float)) and not isinstance(b, bool):
            if not isinstance(a, (int, float)) or abs(float(a) - float(b)) > 1e-9:
                out.append(f"{p}: {a!r} != {b!r}")

    for i, (a, b) in enumerate(zip(ours, theirs)):
        walk(a, b, f"{path}[{i}]")
    return out


def compare_method(method: str, args, folder: Path, family: str, n_layers: int, workdir: Path) -> dict:
    hp_path = write_hparams(args.easyedit_dir, method, family, folder, n_layers, workdir, args.stats_samples)
    write_stats(hp_path, folder, method, args)
    kwargs = load_requests(args.requests_file, args.requests)
    print(f"[{method}] {args.requests} request(s) through EasyEdit, then fastedit.easyedit ...", flush=True)
    ee_metrics, ee_w, ee_s, templates = run_side("easyedit", method, hp_path, kwargs)
    fe_metrics, fe_w, fe_s, _ = run_side("fastedit", method, hp_path, kwargs, templates=templates)
    layers = {}
    for name, (b0, a0) in ee_w.items():
        b1, a1 = fe_w[name]
        layers[name] = {
            "same_weights_before": bool(torch.equal(b0, b1)),
            "max_abs_weight_diff": float((a1.double() - a0.double()).abs().max()),
            "rel_update_error": rel_error(a1 - b1, a0 - b0),
            "easyedit_update_norm": float((a0 - b0).double().norm()),
            "fastedit_update_norm": float((a1 - b1).double().norm()),
        }
    diffs = metric_differences(fe_metrics, ee_metrics, method)
    worst = max(v["max_abs_weight_diff"] for v in layers.values())
    return {
        "method": method, "hparams_file": str(hp_path), "easyedit_file": EASYEDIT_FILES[(method, family)],
        "layers": layers, "max_abs_weight_diff": worst,
        "max_rel_update_error": max(v["rel_update_error"] for v in layers.values()),
        "metric_differences": diffs, "n_metric_values_compared": _count_leaves(ee_metrics),
        "passed": worst <= args.tolerance and not diffs and all(v["same_weights_before"] for v in layers.values()),
        "easyedit_seconds": ee_s, "fastedit_seconds": fe_s, "templates": templates,
        "easyedit_metrics": ee_metrics, "fastedit_metrics": fe_metrics,
    }


def _count_leaves(metrics) -> int:
    def n(x):
        if isinstance(x, dict):
            return sum(n(v) for k, v in x.items() if k not in ("metric_meta", "requested_rewrite", "time"))
        if isinstance(x, (list, tuple)):
            return sum(n(v) for v in x)
        return 1 if isinstance(x, (int, float)) and not isinstance(x, bool) else 0

    return sum(n({k: m[k] for k in ("pre", "post")}) for m in metrics)


def table(summary: dict, results: list[dict]) -> str:
    m = summary["machine"]
    lines = [
        f"compare_easyedit: {summary['model']} (float32), {summary['n_requests']} CounterFact request(s), "
        f"sequential_edit=True, EasyEdit {summary['easyedit_commit']}",
        f"machine: {m['cpu']}, {m['torch_threads']} torch threads, torch {m['torch']}, transformers {m['transformers']}",
        "",
        f"{'method':<7} {'edited weight':<38} {'max |W_fe - W_ee|':>18} {'rel. error of dW':>17}",
        "-" * 84,
    ]
    for r in results:
        for name, v in r["layers"].items():
            lines.append(f"{r['method']:<7} {name:<38} {v['max_abs_weight_diff']:>18.2e} {v['rel_update_error']:>17.2e}")
    lines += ["", f"{'method':<7} {'EasyEdit s':>10} {'fastedit s':>10} {'metric values compared':>23} "
              f"{'differing':>10} {'ok':>4}", "-" * 70]
    for r in results:
        lines.append(f"{r['method']:<7} {r['easyedit_seconds']:>10.1f} {r['fastedit_seconds']:>10.1f} "
                     f"{r['n_metric_values_compared']:>23} {len(r['metric_differences']):>10} "
                     f"{'yes' if r['passed'] else 'NO':>4}")
        lines += [f"    {d}" for d in r["metric_differences"][:20]]
    lines.append(f"(tolerance {summary['tolerance']:g} on weights; times include the pre/post evaluation)")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--easyedit-dir", required=True, type=Path, help="copy of zjunlp/EasyEdit (easyeditor/, hparams/)")
    ap.add_argument("--method", choices=["rome", "memit", "both"], default="both")
    ap.add_argument("--model", default="random:gpt2", help="random:gpt2 or a fastedit model name (smollm2-135m)")
    ap.add_argument("--requests", type=int, default=3, help="how many CounterFact records, from the first")
    ap.add_argument("--requests-file", type=Path, default=DEFAULT_REQUESTS)
    ap.add_argument("--stats-source", type=Path, default=DEFAULT_STATS_SOURCE)
    ap.add_argument("--stats-samples", type=int, default=20, help="mom2_n_samples in the YAML files")
    ap.add_argument("--stats-max-len", type=int, default=512)
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a new temp folder)")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "compare_easyedit.json")
    ap.add_argument("--absent", default="torchvision,timm",
                    help="packages EasyEdit imports that cannot be installed here, replaced by placeholders "
                         "that raise on use (empty: none)")
    args = ap.parse_args(argv)
    absent = [n for n in args.absent.split(",") if n]
    if absent:
        sys.meta_path.insert(0, _AbsentFinder(absent))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args.easyedit_dir = args.easyedit_dir.resolve()
    args.stats_source, args.requests_file, out = args.stats_source.resolve(), args.requests_file.resolve(), args.out.resolve()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="fastedit-compare-easyedit-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(args.easyedit_dir))
    os.chdir(workdir)  # EasyEdit writes logs/ into the working directory
    machine = machine_description()
    folder, family, n_layers = save_model(args.model, workdir)
    methods = ["rome", "memit"] if args.method == "both" else [args.method]
    results = [compare_method(m, args, folder, family, n_layers, workdir) for m in methods]
    commit = (args.easyedit_dir / "COMMIT").read_text().strip() if (args.easyedit_dir / "COMMIT").exists() else None
    summary = {"model": args.model, "model_folder": str(folder), "n_requests": args.requests, "easyedit_dir": str(args.easyedit_dir),
               "easyedit_commit": commit, "machine": machine, "tolerance": args.tolerance,
               "absent_packages_replaced_by_placeholders": absent,
               "passed": all(r["passed"] for r in results)}
    text = table(summary, results)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "results": results}, indent=2, default=float) + "\n")
    out.with_suffix(".txt").write_text(text + "\n")
    print(json.dumps({k: summary[k] for k in ("model", "n_requests", "passed")}))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
