"""The ``fastedit`` command.

    fastedit demo                              the embedded default: 8 sequential edits of SmolLM2-135M
    fastedit edit --model M --method memit --requests R.json --hparams smollm2-135m --out DIR
    fastedit stats --model M --hparams smollm2-135m --method memit --source wiki.jsonl
    fastedit run --model smollm2-135m --method memit --data counterfact.json --edits 1000 --eval-every 50 --out runs/x
    fastedit plot runs/x                       redraw a run's plots
    fastedit compare runs/memit runs/encore --out runs/cmp   several runs in one figure and one table
    fastedit presets                           the shipped hyperparameter presets and their sources

Models are fastedit names (``smollm2-135m``), local folders or hub ids. Run ``fastedit CMD --help``.

Errors are one line on stderr; the exit code is 2 for bad input or usage, 1 for a run that failed,
130 for an interruption. ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .argtypes import int_at_least, positive_float

__all__ = ["main", "run_reporting_errors"]

log = logging.getLogger("fastedit")


def _add_stats_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stats-dir", default=None, help="statistics cache folder (default: $FASTEDIT_STATS_DIR or data/stats)")
    p.add_argument(
        "--stats-source",
        default=None,
        help="text to compute missing statistics from: a .jsonl/.txt file or folder, or a dataset name "
        "(default: $FASTEDIT_STATS_SOURCE, else the hparams' mom2_dataset)",
    )
    p.add_argument("--stats-max-len", type=int_at_least(1), default=None, help="truncate statistics documents to this many tokens")


def _add_device_map_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device-map", default=None, metavar="MAP",
                   help="spread the model over devices with accelerate: auto, balanced, sequential, a device, or a "
                   "JSON object of module name to device (overrides --device)")


def _device_map(arg: str | None):
    """``--device-map``: a JSON object becomes a dict, anything else is passed as it is."""
    if arg is None or not arg.strip().startswith("{"):
        return arg
    try:
        return json.loads(arg)
    except json.JSONDecodeError as err:
        raise SystemExit(f"--device-map: not a valid JSON object ({err})") from None


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fastedit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    ap.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = ap.add_subparsers(dest="command", required=True)
    from .methods.registry import method_names

    methods = method_names()

    d = sub.add_parser("demo", help="8 sequential counterfactual edits of SmolLM2-135M with a before/after table and a plot")
    d.add_argument("--method", default="memit", choices=methods)
    d.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    d.add_argument("--stats-source", default=None, help="text for the statistics: a .jsonl/.txt file or folder, or 'wikipedia' (streamed "
                   "through datasets) (default: $FASTEDIT_STATS_SOURCE, else the Wikipedia sample that ships with fastedit)")
    d.add_argument("--stats-dir", default=None, help="statistics cache (default: $FASTEDIT_CACHE/stats)")
    d.add_argument("--seed", type=int, default=0)

    e = sub.add_parser("edit", help="apply edit requests to a model")
    e.add_argument("--model", required=True, help="fastedit name (smollm2-135m), local folder or hub id")
    e.add_argument("--method", default="memit", choices=methods)
    e.add_argument("--requests", required=True, help="JSON list / JSON-lines of requests (reference, CounterFact or EasyEdit layout)")
    e.add_argument("--hparams", default=None, help="preset name (smollm2-135m, gpt2-xl, ...) or reference hparams JSON file")
    e.add_argument("--batch-size", type=int_at_least(1), default=None, help="requests per edit for the methods that edit batches (MEMIT family; default: all at once); the ROME family edits one at a time")
    e.add_argument("--out", required=True, help="output folder: result.json, updates.safetensors, config.json")
    e.add_argument("--save-model", action="store_true",
                   help="also write the edited model to OUT/model with save_pretrained (from_pretrained loads it)")
    e.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    e.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    _add_device_map_arg(e)
    e.add_argument("--seed", type=int, default=0, help="seed of the context-template sampler")
    e.add_argument("--profile", default=None, metavar="PATH", help="write a Chrome trace of the edits to PATH")
    _add_stats_args(e)

    s = sub.add_parser("stats", help="compute and cache second-moment statistics for the edited layers "
                       "(one pass, packed, resumable, torchrun-distributed)")
    from .stats.command import add_arguments as _stats_arguments

    _stats_arguments(s)

    _add_run_parser(sub, methods)

    pl = sub.add_parser("plot", help="redraw the plots of a run directory")
    pl.add_argument("run_dir")

    c = sub.add_parser("compare", help="draw several run directories (e.g. one per method) into one figure and one table")
    c.add_argument("run_dirs", nargs="+", help="run directories written by `fastedit run`")
    c.add_argument("--out", required=True, help="folder for compare.png and compare.md")
    c.add_argument("--title", default=None)

    sub.add_parser("presets", help="list the shipped hyperparameter presets")
    return ap


def _add_run_parser(sub, methods: list[str]) -> None:
    """``fastedit run``: its options."""
    r = sub.add_parser("run", help="a sequential scaling run: N edits with forgetting, downstream ability and norms measured")
    r.add_argument("--model", default="smollm2-135m", help="fastedit name (smollm2-135m), local folder or hub id")
    r.add_argument("--method", default="memit", choices=methods)
    r.add_argument("--mode", default="exact", choices=["exact", "fast"])
    r.add_argument("--data", default="", help="CounterFact (either layout) or zsRE file; 'hub' for the whole dataset through datasets, or "
                   "hf:owner/name[/file.json] (default: CounterFact's 10,000 records that ship with fastedit; zsRE: "
                   "kmeng01's zsre_mend_eval.json, downloaded once)")
    r.add_argument("--dataset", default="counterfact", choices=["counterfact", "zsre"])
    r.add_argument("--edits", type=int_at_least(1), required=True, help="number of edits (each of --batch-size requests)")
    r.add_argument("--batch-size", type=int_at_least(1), default=1)
    r.add_argument("--eval-every", type=int_at_least(1), default=10, help="checkpoint every K edits: scores, forgetting, GLUE, norms")
    r.add_argument("--start", type=int_at_least(0), default=0, help="first record of the dataset to use")
    r.add_argument("--hparams", default=None, help="preset or hparams JSON (default: the model's preset)")
    r.add_argument("--downstream-n", type=int_at_least(0), default=50, help="GLUE examples per task at each checkpoint (0: off)")
    r.add_argument("--fluency-prompts", type=int_at_least(0), default=0, help="prompts for generation entropy at each checkpoint (0: off)")
    r.add_argument("--disable-factor", type=positive_float, default=10.0, help="flag an edit whose update norm exceeds this × the running median")
    r.add_argument("--entropy-collapse", type=positive_float, default=0.75,
                   help="with --fluency-prompts: flag the edits of a checkpoint window where generation entropy fell "
                   "below this × its initial value")
    r.add_argument("--zsre-target", default="answers0", choices=["answers0", "alt"], help="zsRE: MEMIT's answers[0] or ROME's alt")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    _add_device_map_arg(r)
    r.add_argument("--report-to", default="none", choices=["none", "tensorboard", "wandb"],
                   help="also log to TensorBoard (RUN/tensorboard) or Weights & Biases (offline unless WANDB_API_KEY "
                   "or WANDB_MODE says otherwise); optional packages. JSONL logs and plots are written either way")
    r.add_argument("--profile", default=None, metavar="PATH", help="write a Chrome trace of this invocation's edits to PATH")
    r.add_argument("--out", required=True, help="run directory (an existing one with the same configuration resumes)")
    r.add_argument("--time-limit", type=positive_float, default=None, metavar="MINUTES",
                   help="stop at the first checkpoint after this many minutes (the same command goes on later)")
    r.add_argument("--threads", type=int_at_least(1), default=None, help="torch CPU threads")
    _add_stats_args(r)


def _device(arg: str | None) -> str:
    import torch

    return arg or ("cuda" if torch.cuda.is_available() else "cpu")


def _read_requests(path: str) -> list:
    from .requests import RequestError

    text = Path(path).read_text()
    try:
        if path.endswith(".jsonl"):
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RequestError(f"{path}: not valid JSON ({e})") from None
    return data if isinstance(data, list) else [data]


def cmd_demo(args) -> int:
    from .experiments.demo import format_table, run_demo

    summary = run_demo(args.out, method=args.method, stats_source=args.stats_source, stats_dir=args.stats_dir, seed=args.seed)
    print(format_table(summary))
    print(f"\nresults, per-edit log and plot in {args.out}/ (results.json, steps.jsonl, demo.png)")
    return 0


# what `fastedit edit` writes into OUT; an OUT holding only these is an earlier output it may replace
EDIT_OUTPUTS = ("config.json", "result.json", "updates.safetensors", "model")


def cmd_edit(args) -> int:
    from .engine import EditSession
    from .hparams import load_hparams
    from .engine.files import check_replaceable, replace_folder
    from .models.loading import load_model
    from .profiling import chrome_trace
    from .requests import as_requests

    # inputs are checked before the model is loaded or anything is written
    reqs = as_requests(_read_requests(args.requests))
    hparams = load_hparams(args.method, args.hparams) if args.hparams is not None else None
    out = Path(args.out).absolute()
    trace = Path(args.profile).absolute() if args.profile else None
    trace_in_out = trace is not None and out in trace.parents
    allowed = EDIT_OUTPUTS + ((trace.relative_to(out).parts[0],) if trace_in_out else ())
    check_replaceable(out, allowed)  # before the edits, not after them
    model, tok = load_model(args.model, dtype=args.dtype, device=_device(args.device), device_map=_device_map(args.device_map))
    session = EditSession(
        model, tok, args.method, hparams, seed=args.seed, stats_dir=args.stats_dir,
        stats_source=args.stats_source, stats_max_len=args.stats_max_len,
    )
    if session.method_class.batched:
        size = args.batch_size or len(reqs)
        batches = [reqs[i : i + size] for i in range(0, len(reqs), size)]
    else:
        batches = [[r] for r in reqs]
    results, tensors = [], {}
    t0 = time.perf_counter()
    # every batch is applied before OUT changes: a failed one leaves OUT as it was
    with tempfile.TemporaryDirectory() as scratch:
        trace_file = Path(scratch) / "trace.json" if trace_in_out else trace
        with chrome_trace(trace_file):
            for b, batch in enumerate(batches):
                res = session.apply(batch)
                results.append({"ids": res.ids, "update_norms": res.update_norms, "times": res.times})
                for u in res.updates:
                    tensors[f"{b}.{u.weight_name}.keys_side"] = u.keys_side.detach().float().cpu().contiguous()
                    tensors[f"{b}.{u.weight_name}.values_side"] = u.values_side.detach().float().cpu().contiguous()
                print(res.summary())
        config = {"model": args.model, "method": args.method, "hparams": session.hp.to_dict(), "requests": args.requests,
                  "seed": args.seed, "dtype": args.dtype}
        edits = {"edits": results, "seconds": time.perf_counter() - t0}

        def write(folder: Path) -> None:
            _write_edit_outputs(folder, config, edits, tensors, (model, tok, session) if args.save_model else None)
            if trace_in_out:
                (folder / trace.relative_to(out)).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(trace_file), folder / trace.relative_to(out))

        replace_folder(out, write, allowed)
    print(f"wrote {out}/result.json and {out}/updates.safetensors" + (f" and {out}/model" if args.save_model else ""))
    return 0


def _write_edit_outputs(folder: Path, config: dict, edits: dict, tensors: dict, saved_model) -> None:
    """config.json, result.json, updates.safetensors and, when ``saved_model`` = (model, tok,
    session), the edited model in ``model/``."""
    from safetensors.torch import save_file

    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "result.json").write_text(json.dumps(edits, indent=2) + "\n")
    save_file(tensors, str(folder / "updates.safetensors"))
    if saved_model:
        from .models.loading import save_model

        model, tok, _ = saved_model
        save_model(model, tok, folder / "model")


def cmd_stats(args) -> int:
    from .stats.command import run

    return run(args)


def cmd_run(args) -> int:
    from .experiments.sequential import RunConfig, run_sequential

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cfg = RunConfig(
        model=args.model, method=args.method, mode=args.mode, data=args.data, dataset=args.dataset, edits=args.edits,
        batch_size=args.batch_size, eval_every=args.eval_every, start=args.start, hparams=args.hparams,
        stats_source=args.stats_source, stats_dir=args.stats_dir, stats_max_len=args.stats_max_len or 512,
        downstream_n=args.downstream_n, fluency_prompts=args.fluency_prompts, disable_factor=args.disable_factor,
        entropy_collapse=args.entropy_collapse,
        seed=args.seed, zsre_target=args.zsre_target, dtype=args.dtype, device=args.device,
    )
    summary = run_sequential(cfg, args.out, time_limit=args.time_limit * 60 if args.time_limit else None,
                             device_map=_device_map(args.device_map), report_to=args.report_to, profile=args.profile)
    final = summary["final"].get("all_edits") or {}
    print(f"{summary['edits']} edits in {summary['edit_seconds']:.0f} s of editing; at the end, over all edits: "
          + ", ".join(f"{k} {v:.3f}" for k, v in final.items() if isinstance(v, float)))
    print(f"run directory: {args.out} (config.json, edits.jsonl, checkpoints.jsonl, summary.json, *.png)")
    return 0


def cmd_plot(args) -> int:
    from .experiments.plots import plot_run

    for path in plot_run(args.run_dir):
        print(path)
    return 0


def cmd_compare(args) -> int:
    from .experiments.compare import compare_runs

    png, md = compare_runs(args.run_dirs, args.out, args.title)
    print(md.read_text(), end="")
    print(f"figure: {png}")
    return 0


def cmd_presets(args) -> int:
    from .hparams import PRESET_SOURCES

    print(f"{'method':<10} {'model':<14} source")
    for (method, model), source in sorted(PRESET_SOURCES.items()):
        print(f"{method:<10} {model:<14} {source}")
    print("r-rome uses the ROME presets with r-ROME's key handling switched on.")
    return 0


def _exit_code(e: BaseException) -> int:
    """2 when the error (or one it was raised from) is bad input, 1 for a failed run."""
    from .errors import InputError

    seen = e
    while seen is not None:
        if isinstance(seen, (InputError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)):
            return 2
        seen = seen.__cause__
    return 1


def run_reporting_errors(prog: str, command, args) -> int:
    """``command(args)``; an error becomes one line on stderr (what and where) and an exit code
    (:func:`_exit_code`; 130 on Ctrl-C); ``args.debug`` re-raises it with its traceback."""
    try:
        return command(args)
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if getattr(args, "debug", False):
            raise
        what = " ".join(str(e).split()) or "(no message)"
        where = ""
        if not isinstance(e, OSError) and e.__traceback__ is not None:
            import traceback

            frame = traceback.extract_tb(e.__traceback__)[-1]
            where = f" [{Path(frame.filename).name}:{frame.lineno}]" if _exit_code(e) == 1 else ""
        print(f"{prog}: error: {type(e).__name__}: {what}{where} (--debug for the traceback)", file=sys.stderr)
        return _exit_code(e)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose or args.command in ("demo", "stats", "run") else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    commands = {"demo": cmd_demo, "edit": cmd_edit, "stats": cmd_stats, "run": cmd_run, "plot": cmd_plot, "compare": cmd_compare, "presets": cmd_presets}
    return run_reporting_errors(f"fastedit {args.command}", commands[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
