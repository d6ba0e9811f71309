"""The fastedit command on a small random model saved to disk."""

import json
import subprocess
import sys

import pytest
import torch

from fastedit.cli import main
from fastedit.models import random_model
from textdata import write_stats_corpus


def test_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "fastedit.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("demo", "edit", "stats", "presets"):
        assert cmd in out.stdout
    out = subprocess.run([sys.executable, "-m", "fastedit.cli", "edit", "--help"], capture_output=True, text=True)
    assert "--requests" in out.stdout and "--stats-source" in out.stdout


def test_presets(capsys):
    assert main(["presets"]) == 0
    assert "kmeng01/memit hparams/MEMIT/gpt2-xl.json" in capsys.readouterr().out


@pytest.fixture()
def saved_model(tmp_path, gpt2_tok):
    model = random_model("gpt2")
    path = tmp_path / "tiny-gpt2"
    model.save_pretrained(path)
    gpt2_tok.save_pretrained(path)
    return path


def test_stats_then_edit(tmp_path, saved_model, capsys):
    text = write_stats_corpus(tmp_path / "corpus.jsonl")
    hp = {"layers": [1, 2], "v_num_grad_steps": 3, "v_loss_layer": 3, "mom2_update_weight": 10.0, "mom2_n_samples": 6}
    (tmp_path / "hp.json").write_text(json.dumps(hp))
    stats = tmp_path / "stats"
    assert main(["stats", "--model", str(saved_model), "--hparams", str(tmp_path / "hp.json"),
                 "--stats-dir", str(stats), "--stats-source", str(text), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "statistics for 2 layer(s)" in printed and printed.count("layer ") >= 2 and "caches:" in printed
    reqs = [{"case_id": 1, "prompt": "{} plays the sport of", "subject": "LeBron James", "target_new": {"str": "football"}},
            {"case_id": 2, "prompt": "The mother tongue of Danielle Darrieux is", "subject": "Danielle Darrieux",
             "target_new": "English", "ground_truth": "French"}]
    (tmp_path / "reqs.json").write_text(json.dumps(reqs))
    out = tmp_path / "out"
    assert main(["edit", "--model", str(saved_model), "--method", "memit", "--requests", str(tmp_path / "reqs.json"),
                 "--hparams", str(tmp_path / "hp.json"), "--stats-dir", str(stats), "--out", str(out),
                 "--device", "cpu", "--save-model", "--batch-size", "1"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert [e["ids"] for e in result["edits"]] == [[1], [2]]
    assert (out / "updates.safetensors").exists() and (out / "model" / "model.safetensors").exists()
    from transformers import AutoModelForCausalLM

    edited = AutoModelForCausalLM.from_pretrained(out / "model")
    base = AutoModelForCausalLM.from_pretrained(saved_model)
    name = "transformer.h.1.mlp.c_proj.weight"
    assert not torch.equal(edited.get_parameter(name), base.get_parameter(name))
    assert torch.equal(edited.get_parameter("transformer.h.0.mlp.c_proj.weight"), base.get_parameter("transformer.h.0.mlp.c_proj.weight"))


def test_edit_replaces_its_output_folder_only_when_every_batch_succeeded(tmp_path, saved_model, monkeypatch, capsys):
    """A failed batch leaves an earlier output folder exactly as it was (config.json included); a
    successful run replaces it whole; a folder holding other files is refused before any edit."""
    from fastedit.engine import EditFailedError, EditSession

    text = write_stats_corpus(tmp_path / "corpus.jsonl")
    hp = {"layers": [1], "v_num_grad_steps": 2, "v_loss_layer": 3, "mom2_update_weight": 10.0, "mom2_n_samples": 6}
    (tmp_path / "hp.json").write_text(json.dumps(hp))
    reqs = [{"case_id": i, "prompt": "{} plays the sport of", "subject": "LeBron James", "target_new": t}
            for i, t in enumerate(["football", "tennis"])]
    (tmp_path / "reqs.json").write_text(json.dumps(reqs))
    out = tmp_path / "out"

    def edit(seed):
        return main(["edit", "--model", str(saved_model), "--requests", str(tmp_path / "reqs.json"), "--hparams",
                     str(tmp_path / "hp.json"), "--stats-dir", str(tmp_path / "stats"), "--stats-source", str(text),
                     "--out", str(out), "--device", "cpu", "--batch-size", "1", "--seed", str(seed)])

    assert edit(seed=0) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real, calls = EditSession.apply, {"n": 0}

    def failing(self, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise EditFailedError("injected in the second batch")
        return real(self, batch)

    monkeypatch.setattr(EditSession, "apply", failing)
    assert edit(seed=1) == 1  # a failed run: one line on stderr, exit code 1
    assert "injected in the second batch" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    monkeypatch.setattr(EditSession, "apply", real)
    assert edit(seed=1) == 0
    assert json.loads((out / "config.json").read_text())["seed"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    (out / "notes.txt").write_text("mine")
    assert edit(seed=2) == 2  # refused before any edit, as bad usage
    assert "notes.txt" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
