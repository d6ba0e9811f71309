"""A statistics run killed (SIGKILL) mid-way resumes and ends with exactly the uninterrupted sums."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from fastedit.models import random_model
from fastedit.stats.cache import StatsMismatchError
from fastedit.stats.checkpoint import checkpoint_files
from fastedit.stats.collect import collect
from fastedit.stats.sources import TextSource

from .runs import CACHE, command_argv


def _load(path):
    with np.load(path, allow_pickle=False) as d:
        return np.array(d["mom2.mom2"]), int(d["mom2.count"])


def test_killed_run_resumes_to_the_same_sums(short_corpus, uninterrupted_run, tmp_path):
    """The uninterrupted run is in this process (same code, same thread count as the subprocesses)."""
    whole = uninterrupted_run

    # a real run in a subprocess, killed after its second checkpoint
    cut = tmp_path / "cut"
    cmd = [sys.executable, "-m", "fastedit.stats.command", *command_argv(short_corpus, cut)]
    files = checkpoint_files(cut / CACHE.format(1))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            step = json.loads(files.summary.read_text())["step"]
        except (FileNotFoundError, ValueError, KeyError):
            step = 0
        if step >= 4:  # two checkpoints of 2 steps each
            proc.send_signal(signal.SIGKILL)
            killed_at = step
            break
        time.sleep(0.005)
    out = proc.communicate(timeout=60)[0].decode()
    assert killed_at is not None, f"the run ended (rc {proc.returncode}) before it could be killed:\n{out}"
    assert proc.returncode == -signal.SIGKILL
    assert not (cut / CACHE.format(1)).exists(), "killed too late: the run had finished"
    assert files.current.exists()

    # the same command again resumes and finishes
    summary = tmp_path / "summary.json"
    done = subprocess.run(cmd + ["--summary", str(summary)], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    rep = json.loads(summary.read_text())["report"]
    assert rep["resumed_from"] and rep["resumed_from"]["tokens"] > 0
    assert rep["tokens_this_run"] < rep["tokens"]
    for layer in (1, 2):
        a, na = _load(whole / CACHE.format(layer))
        b, nb = _load(cut / CACHE.format(layer))
        assert na == nb
        assert np.array_equal(a, b), f"layer {layer}: max |Δ| {np.abs(a - b).max():.3e}"
    assert not files.existing() and not files.summary.exists(), "checkpoints are removed once the caches exist"
    sidecar = CACHE.format(1)[: -len(".npz")] + ".meta.json"
    meta, meta_whole = (json.loads((d / sidecar).read_text()) for d in (cut, whole))
    assert meta["tokens"] == na and len(meta["convergence"]) == len(rep["curve"])
    assert meta["convergence"] == meta_whole["convergence"]  # the curve is the same too


def test_checkpoint_of_another_run_is_refused(tmp_path, gpt2_tok):
    model = random_model("gpt2")
    src = TextSource("t", ["The cat sat on the mat. " * 8] * 12)
    names = ["transformer.h.1.mlp.c_proj"]
    ck = tmp_path / "c.npz"
    kw = dict(max_len=32, rows=1, check_every=32, checkpoint=ck, checkpoint_every=32, progress=False, window_docs=2)
    first = collect(model, gpt2_tok, None, names, src, None, **kw)
    assert first.checkpoint.current.exists()  # collect leaves them; the store removes them after writing
    again = collect(model, gpt2_tok, None, names, src, None, **kw)  # resumes from the last checkpoint
    assert again.report.resumed_from is not None
    assert torch.equal(again.stats[names[0]].mom2, first.stats[names[0]].mom2)
    with pytest.raises(StatsMismatchError, match="layers: checkpoint has .*h.1.*this run .*h.2"):
        collect(model, gpt2_tok, None, ["transformer.h.2.mlp.c_proj"], src, None, **kw)
    with pytest.raises(StatsMismatchError, match="max_len"):
        collect(model, gpt2_tok, None, names, src, None, **{**kw, "max_len": 64})
    fresh = collect(model, gpt2_tok, None, names, src, None, **{**kw, "resume": False})
    assert fresh.report.resumed_from is None
