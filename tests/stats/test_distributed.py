"""Two gloo processes under torchrun get the same C as one process; ranks agree on where to resume."""

import json
import socket
import subprocess
import sys

import numpy as np
import pytest

from fastedit.stats.cache import StatsMismatchError
from fastedit.stats.checkpoint import checkpoint_files
from fastedit.stats.distributed import DistContext

from .runs import CACHE, command_argv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load(path):
    with np.load(path, allow_pickle=False) as d:
        return np.array(d["mom2.mom2"], dtype=np.float64), int(d["mom2.count"])


def test_two_processes_give_the_same_sums(short_corpus, uninterrupted_run, tmp_path):
    out = tmp_path / "two"
    summary = tmp_path / "summary.json"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), "-m", "fastedit.stats.command",
        *command_argv(short_corpus, out), "--summary", str(summary),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rep = json.loads(summary.read_text())["report"]
    assert rep["world_size"] == 2
    for layer in (1, 2):
        one, n1 = _load(uninterrupted_run / CACHE.format(layer))
        two, n2 = _load(out / CACHE.format(layer))
        assert n1 == n2 == rep["tokens"]
        # the same documents in the same rows; only the order of the float32 sums differs
        err = np.linalg.norm(two - one) / np.linalg.norm(one)
        assert err < 1e-6, f"layer {layer}: relative error {err:.2e}"
    assert len(rep["curve"]) >= 2  # checks ran across both ranks
    # only rank 0 printed, every rank's checkpoints are gone
    assert done.stdout.count("statistics for 2 layer(s)") == 1
    assert not list(out.rglob("*.partial*"))


class _FakeGroup(DistContext):
    """Rank 0 of 2, the other rank's answers given."""

    def __init__(self, other):
        super().__init__(rank=0, world=2)
        object.__setattr__(self, "_other", other)

    def all_gather_object(self, obj):
        return [obj, self._other]


def test_ranks_resume_from_their_newest_common_checkpoint(tmp_path, gpt2_tok):
    """A kill can leave rank 0 one checkpoint ahead of rank 1: both go back to the step they share."""
    import torch

    from fastedit.models import random_model
    from fastedit.stats.collect import _resume_state, collect
    from fastedit.stats.sources import TextSource

    model = random_model("gpt2")
    src = TextSource("t", ["The cat sat on the mat. " * 8] * 16)
    names = ["transformer.h.1.mlp.c_proj"]
    ck = tmp_path / "c.npz"
    # this process's checkpoints (the newest and the one before) stand for rank 0's
    kw = dict(max_len=32, rows=1, check_every=32, checkpoint=ck, checkpoint_every=32, progress=False, window_docs=2)
    collect(model, gpt2_tok, None, names, src, None, **kw)
    files = checkpoint_files(ck)
    steps = {files.read_state(p)["step"]: p for p in files.existing()}
    assert len(steps) == 2
    newest, older = max(steps), min(steps)
    cfg = files.read_state(files.current)["config"]
    dev = {names[0]: torch.device("cpu")}
    st = _resume_state(files, cfg, names, dev, _FakeGroup(([older], None)))
    assert st.step == older
    st = _resume_state(files, cfg, names, dev, _FakeGroup(([older, newest], None)))
    assert st.step == newest
    assert _resume_state(files, cfg, names, dev, _FakeGroup(([], None))) is None  # nothing in common: afresh
    with pytest.raises(StatsMismatchError, match="other rank"):
        _resume_state(files, cfg, names, dev, _FakeGroup(([older], "other rank: mismatch")))
