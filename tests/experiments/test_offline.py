"""The default jobs on a user's machine: no offline data folder, no network, no data variables.

The demo's path (``run_demo``) and ``fastedit run`` with its defaults (the shipped CounterFact
records, Wikipedia sample and GLUE subsets) run on a tiny random model in a subprocess that may not
read the offline data folder beside the checkout, with every ``FASTEDIT_*`` variable but the cache
removed and the Hugging Face offline switches on.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastedit.bundled import COUNTERFACT_SAMPLE, WIKIPEDIA_SAMPLE
from fastedit.models import random_model

REPO = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("offline_runner.py")


@pytest.fixture(scope="module")
def user(tmp_path_factory, gpt2_tok):
    root = tmp_path_factory.mktemp("user")
    random_model("gpt2", n_positions=1024).save_pretrained(root / "tiny-gpt2")
    gpt2_tok.save_pretrained(root / "tiny-gpt2")
    (root / "hp.json").write_text(json.dumps({
        "layers": [1, 2], "v_num_grad_steps": 2, "v_loss_layer": 3, "mom2_update_weight": 10.0, "mom2_n_samples": 4,
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTEDIT_")}
    env.update(FASTEDIT_CACHE=str(root / "cache"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    return root, env


def run(user, *args):
    root, env = user
    cmd = [sys.executable, str(RUNNER), str(REPO.parent / "shared"), *map(str, args)]
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_guard_refuses_the_offline_folder(user, tmp_path):
    """The runner's guard works: a job pointed at the offline folder fails."""
    root, env = user
    forbidden = tmp_path / "shared"
    (forbidden / "data").mkdir(parents=True)
    (forbidden / "data" / "corpus.txt").write_text("text")
    cmd = [sys.executable, str(RUNNER), str(forbidden), "cli", "stats", "--model", str(root / "tiny-gpt2"),
           "--hparams", str(root / "hp.json"), "--stats-source", str(forbidden / "data" / "corpus.txt")]
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "which a user's machine does not have" in done.stderr


def test_demo_needs_nothing_outside_the_package(user):
    root, _ = user
    out = root / "demo"
    done = run(user, "demo", out, root / "tiny-gpt2", root / "hp.json")
    assert "efficacy" in done.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["stats_source"] == str(WIKIPEDIA_SAMPLE)
    assert json.loads((out / "results.json").read_text())["edits"] == 8 and (out / "demo.png").exists()


def test_run_defaults_need_nothing_outside_the_package(user):
    """``fastedit run`` without --data and with the default GLUE probes (50 examples per task)."""
    root, _ = user
    out = root / "run"
    run(user, "cli", "run", "--model", root / "tiny-gpt2", "--hparams", root / "hp.json", "--edits", 2,
        "--eval-every", 2, "--device", "cpu", "--threads", 1, "--out", out)
    ckpts = [json.loads(line) for line in (out / "checkpoints.jsonl").read_text().splitlines()]
    assert [c["edits"] for c in ckpts] == [0, 2]
    assert {task: v["n"] for task, v in ckpts[-1]["downstream"].items()} == {t: 50 for t in ("sst2", "mrpc", "cola", "rte")}
    edits = [json.loads(line) for line in (out / "edits.jsonl").read_text().splitlines()]
    from fastedit.eval.datasets import load_counterfact

    assert [e["case_ids"] for e in edits] == [[r.case_id] for r in load_counterfact(COUNTERFACT_SAMPLE, n=2)]
    assert json.loads((out / "config.json").read_text())["stats_source"] == str(WIKIPEDIA_SAMPLE)
