"""Sequential runs: outputs, and a killed run that resumes to the same results."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from fastedit.models import random_model
from textdata import write_stats_corpus

TIMING = {"seconds", "eval_seconds", "edit_seconds", "edits_per_s", "time_s"}


def strip_timing(obj):
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def setup(tmp_path_factory, gpt2_tok):
    root = tmp_path_factory.mktemp("seq")
    model = random_model("gpt2")
    model.save_pretrained(root / "tiny-gpt2")
    gpt2_tok.save_pretrained(root / "tiny-gpt2")
    (root / "hp.json").write_text(json.dumps({
        "layers": [1, 2], "v_num_grad_steps": 3, "v_loss_layer": 3, "mom2_update_weight": 10.0, "mom2_n_samples": 6,
    }))
    write_stats_corpus(root / "corpus.jsonl")
    return root


def command(setup, shared_data, out, edits=6):
    return [
        sys.executable, "-m", "fastedit.cli", "run", "--model", str(setup / "tiny-gpt2"), "--method", "memit",
        "--data", str(shared_data / "counterfact" / "counterfact-edit.json"), "--edits", str(edits),
        "--batch-size", "1", "--eval-every", "2", "--hparams", str(setup / "hp.json"), "--downstream-n", "4",
        "--stats-source", str(setup / "corpus.jsonl"), "--stats-dir", str(setup / "stats"), "--device", "cpu",
        "--out", str(out),
    ]


def read_jsonl(path):
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def test_run_outputs(setup, shared_data, tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(command(setup, shared_data, out, edits=4), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("config.json", "edits.jsonl", "checkpoints.jsonl", "summary.json", "scores.png", "forgetting.png",
                 "downstream.png", "norms.png"):
        assert (out / name).exists(), name
    ckpts = read_jsonl(out / "checkpoints.jsonl")
    assert [c["edits"] for c in ckpts] == [0, 2, 4]
    last = ckpts[-1]
    assert set(last["downstream"]) >= {"sst2", "mrpc", "cola", "rte"}
    assert len(last["holds"]) == 4 and 0 <= last["all_edits"]["rewrite_success"] <= 1 and "score" in last["all_edits"]
    assert all(v["relative"] > 0 for v in last["norm_growth"].values())
    edits = read_jsonl(out / "edits.jsonl")
    assert [e["edit"] for e in edits] == [1, 2, 3, 4] and all(e["update_norm"] > 0 for e in edits)
    assert json.loads((out / "config.json").read_text())["hparams"]["layers"] == [1, 2]
    replot = subprocess.run([sys.executable, "-m", "fastedit.cli", "plot", str(out)], capture_output=True, text=True)
    assert replot.returncode == 0 and "norms.png" in replot.stdout


@pytest.mark.parametrize("torn", [False, True], ids=["kill", "kill-mid-append"])
def test_killed_run_resumes_to_the_same_results(setup, shared_data, tmp_path, torn):
    """Kill a real run after its first saved checkpoint, resume it, and compare with a run that was
    never interrupted: same log lines (timings aside), same final weights bit for bit. ``torn``: the
    kill also left half-written last lines in both logs (a kill or a full disk during an append)."""
    whole = tmp_path / "whole"
    assert subprocess.run(command(setup, shared_data, whole), capture_output=True, timeout=600).returncode == 0

    broken = tmp_path / "broken"
    proc = subprocess.Popen(command(setup, shared_data, broken), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # wait until the session of the second checkpoint (after edit 4) is being written or the third edit runs
    while time.time() < deadline:
        edits = broken / "edits.jsonl"
        if edits.exists() and len(read_jsonl(edits)) >= 3 and (broken / "session" / "session.json").exists():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (broken / "summary.json").exists(), "the run finished before it could be killed"
    if torn:
        for name in ("edits.jsonl", "checkpoints.jsonl"):
            with open(broken / name, "a") as f:
                f.write('{"edit": 99, "edits": 99, "case_ids": [1')
    resumed = subprocess.run(command(setup, shared_data, broken), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name in ("edits.jsonl", "checkpoints.jsonl"):
        assert strip_timing(read_jsonl(broken / name)) == strip_timing(read_jsonl(whole / name)), name
    a, b = (load_file(str(run / "session" / json.loads((run / "session" / "session.json").read_text())["files"]["weights"]))
            for run in (whole, broken))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    sa = json.loads((whole / "summary.json").read_text())
    sb = json.loads((broken / "summary.json").read_text())
    assert strip_timing(sa) == strip_timing(sb)


def test_a_run_stopped_before_its_first_save_logs_checkpoint_0_once(setup, shared_data, tmp_path):
    from fastedit.experiments.sequential import RunConfig, run_sequential

    cfg = RunConfig(model=str(setup / "tiny-gpt2"), hparams=str(setup / "hp.json"), edits=2, eval_every=2,
                    data=str(shared_data / "counterfact" / "counterfact-edit.json"), downstream_n=0,
                    fluency_prompts=2, stats_source=str(setup / "corpus.jsonl"), stats_dir=str(setup / "stats"),
                    device="cpu")
    out = tmp_path / "run"
    run_sequential(cfg, out, progress=False, stop_after=1)  # edit 1 made, no session saved: it is redone
    assert [c["edits"] for c in read_jsonl(out / "checkpoints.jsonl")] == [0]
    run_sequential(cfg, out, progress=False)
    assert [c["edits"] for c in read_jsonl(out / "checkpoints.jsonl")] == [0, 2]
    assert [e["edit"] for e in read_jsonl(out / "edits.jsonl")] == [1, 2]


def test_time_limit_then_extend_but_refuse_a_different_configuration(setup, shared_data, tmp_path):
    out = tmp_path / "run"
    limited = subprocess.run(command(setup, shared_data, out, edits=4) + ["--time-limit", "0.0001"],
                             capture_output=True, text=True, timeout=600)
    assert limited.returncode == 0 and "time limit" in limited.stderr, limited.stderr[-2000:]
    assert [c["edits"] for c in read_jsonl(out / "checkpoints.jsonl")] == [0, 2]
    more = subprocess.run(command(setup, shared_data, out, edits=6), capture_output=True, text=True, timeout=600)
    assert more.returncode == 0, more.stderr[-2000:]
    assert [e["edit"] for e in read_jsonl(out / "edits.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert [c["edits"] for c in read_jsonl(out / "checkpoints.jsonl")] == [0, 2, 4, 6]
    other = command(setup, shared_data, out, edits=6)
    other[other.index("--batch-size") + 1] = "2"
    refused = subprocess.run(other, capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "different configuration" in refused.stderr


def test_entropy_collapse_flags_the_window():
    from fastedit.experiments.sequential import RunConfig, _flag_entropy_collapse

    cfg = RunConfig(fluency_prompts=4, entropy_collapse=0.75)
    earlier = [{"edits": 0, "generation_entropy": 6.0}, {"edits": 50, "generation_entropy": 5.9}]
    fine = {"edits": 100, "generation_entropy": 4.6}
    _flag_entropy_collapse(cfg, fine, earlier)
    assert "entropy_collapse" not in fine
    collapsed = {"edits": 100, "generation_entropy": 3.0}
    _flag_entropy_collapse(cfg, collapsed, earlier)
    assert collapsed["entropy_collapse"] == {"ratio": 0.5, "edits": [51, 100]}
