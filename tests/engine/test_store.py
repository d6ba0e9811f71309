"""Saving and loading sessions: identical continuation, incremental saves, all-or-nothing files."""

import copy
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from fastedit.engine import EditSession
from fastedit.models import random_model

from .helpers import REQS, all_parameters, assert_unchanged, make, weights


def load(path, model, gpt2_tok, tmp_path):
    return EditSession.load(path, model, gpt2_tok, stats_dir=tmp_path / "stats", progress=False)


def files_of(folder):
    """name → inode of every file in ``folder``: a rewritten file gets a new inode."""
    return {p.name: p.stat().st_ino for p in folder.iterdir()}


@pytest.fixture()
def saved(gpt2_tok, tmp_path, corpus):
    """A session with two edits (the first undone) saved to ``tmp_path/session``, and an unedited
    twin of its model."""
    model = random_model("gpt2")
    twin = copy.deepcopy(model)
    sess = make(gpt2_tok, tmp_path, corpus, model=model)
    sess.apply(REQS[0])
    sess.apply(REQS[1])
    sess.undo(0)
    sess.save(tmp_path / "session")
    return sess, twin, tmp_path / "session"


def test_save_load_continues_identically(saved, gpt2_tok, tmp_path):
    sess, twin, folder = saved
    model = sess.model
    loaded = load(folder, twin, gpt2_tok, tmp_path)
    for k, w in loaded.edited_weights().items():
        assert torch.equal(w, sess.edited_weights()[k])
    assert [e.active for e in loaded.journal] == [False, True]
    assert loaded.journal[1].requests[0].case_id == 6
    sess.apply(REQS[2])
    loaded.apply(REQS[2])
    for k, w in loaded.edited_weights().items():
        assert torch.equal(w, sess.edited_weights()[k]), k
    with pytest.raises(ValueError, match="differs from the session's original"):
        EditSession.load(folder, model, gpt2_tok, stats_dir=tmp_path / "stats")
    with pytest.raises(ValueError, match="not this one"):
        EditSession.load(folder, random_model("gpt2", seed=3), gpt2_tok)


def test_saving_again_writes_only_what_changed(saved, gpt2_tok, tmp_path):
    """The second save into the same folder adds one journal segment, a new weights file and the
    manifest; the originals and the first segment stay as written; the old weights file goes."""
    sess, twin, folder = saved
    first = files_of(folder)
    sess.apply(REQS[2])
    sess.undo(1)
    sess.save(folder)
    second = files_of(folder)
    kept = {n for n in first if second.get(n) == first[n]}
    added = set(second) - set(first)
    assert {n.split("-")[0] for n in kept} == {"base", "journal"}
    assert {n.split("-")[0] for n in added} == {"journal", "weights"}
    assert not {n for n in first if n.startswith("weights-")} & set(second)
    manifest = json.loads((folder / "session.json").read_text())
    assert [s["count"] for s in manifest["journal"]] == [2, 1] and manifest["undone"] == [0, 1]
    loaded = load(folder, twin, gpt2_tok, tmp_path)
    assert [e.active for e in loaded.journal] == [False, False, True]
    for k, w in loaded.edited_weights().items():
        assert torch.equal(w, sess.edited_weights()[k])


def test_a_loaded_session_saves_incrementally_into_its_folder(saved, gpt2_tok, tmp_path):
    sess, twin, folder = saved
    loaded = load(folder, twin, gpt2_tok, tmp_path)
    loaded.apply(REQS[2])
    before = files_of(folder)
    loaded.save(folder)
    segments = [n for n in files_of(folder) if n.startswith("journal-")]
    assert len(segments) == 2 and sum(n in before for n in segments) == 1


def test_another_session_replaces_the_folder_whole(saved, gpt2_tok, tmp_path, corpus):
    sess, twin, folder = saved
    other = make(gpt2_tok, tmp_path, corpus, model=copy.deepcopy(twin))
    other.apply(REQS[2])
    other.save(folder)
    names = files_of(folder)
    assert sum(n.startswith("journal-") for n in names) == 1 and sum(n.startswith("base-") for n in names) == 1
    loaded = load(folder, twin, gpt2_tok, tmp_path)
    assert [e.requests[0].case_id for e in loaded.journal] == [7]


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_save_interrupted_between_files_leaves_the_previous_save(fail_at, saved, gpt2_tok, tmp_path, monkeypatch):
    """A save that dies after its first, second or third file is in place (a rename fails) leaves the
    folder loading as the previous save, whole; the next save goes through."""
    sess, twin, folder = saved
    at_first_save = weights(sess)
    sess.apply(REQS[2])
    real, calls = os.replace, {"n": 0}

    def failing(src, dst, *a, **k):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise OSError("injected: disk full")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="injected"):
        sess.save(folder)
    monkeypatch.setattr(os, "replace", real)
    loaded = load(folder, copy.deepcopy(twin), gpt2_tok, tmp_path)
    assert len(loaded.journal) == 2
    for k, w in loaded.edited_weights().items():
        assert torch.equal(w, at_first_save[k]), k
    sess.save(folder)
    assert not [n for n in files_of(folder) if n.endswith(".tmp")]
    loaded = load(folder, twin, gpt2_tok, tmp_path)
    assert len(loaded.journal) == 3


def test_first_save_interrupted_leaves_no_session(gpt2_tok, tmp_path, corpus, monkeypatch):
    sess = make(gpt2_tok, tmp_path, corpus)
    sess.apply(REQS[0])
    real = os.replace

    def failing(src, dst):
        if not os.path.basename(dst).startswith("base"):
            raise OSError("injected")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="injected"):
        sess.save(tmp_path / "session")
    with pytest.raises(ValueError, match="no fastedit session"):
        EditSession.load(tmp_path / "session", random_model("gpt2"), gpt2_tok)


def _weights_file(folder):
    manifest = json.loads((folder / "session.json").read_text())
    return folder / manifest.get("files", {}).get("weights", "weights.safetensors")


def _tamper_weights(folder, change):
    path = _weights_file(folder)
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


C_PROJ = ["transformer.h.1.mlp.c_proj.weight", "transformer.h.2.mlp.c_proj.weight"]
DEFECTS = {
    "missing key": (lambda t: t.pop(C_PROJ[1]), "missing"),
    "wrongly shaped second weight": (lambda t: t.__setitem__(C_PROJ[1], t[C_PROJ[1]].T.contiguous()), "shape"),
    "(1, d) broadcast": (lambda t: t.__setitem__(C_PROJ[1], t[C_PROJ[1]][:1].contiguous()), "shape"),
    "NaN weights": (lambda t: t[C_PROJ[1]].view(-1).__setitem__(3, float("nan")), "non-finite"),
    "float16 weights": (lambda t: t.update({k: v.half() for k, v in t.items()}), "dtype"),
    "attention weight": (lambda t: t.__setitem__("transformer.h.1.attn.c_proj.weight", torch.zeros(64, 64)), "does not edit"),
}


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_a_defective_session_is_refused_with_the_model_unchanged(defect, saved, gpt2_tok, tmp_path):
    sess, twin, folder = saved
    change, message = DEFECTS[defect]
    _tamper_weights(folder, change)
    before = all_parameters(twin)
    with pytest.raises(ValueError, match=message):
        load(folder, twin, gpt2_tok, tmp_path)
    assert_unchanged(twin, before)


@pytest.mark.parametrize("defect", ["NaN factors", "shape"])
def test_defective_journal_factors_are_refused(defect, saved, gpt2_tok, tmp_path):
    sess, twin, folder = saved
    (path,) = [p for p in folder.iterdir() if p.name.startswith("journal")]
    tensors = load_file(str(path))
    key = sorted(k for k in tensors if k.endswith("/keys"))[-1]
    tensors[key] = tensors[key] * float("nan") if defect == "NaN factors" else tensors[key][:1].contiguous()
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    save_file(tensors, str(path), metadata=meta)
    before = all_parameters(twin)
    with pytest.raises(ValueError, match="non-finite" if defect == "NaN factors" else "shape"):
        load(folder, twin, gpt2_tok, tmp_path)
    assert_unchanged(twin, before)


def test_a_failure_while_restoring_puts_the_model_back(saved, gpt2_tok, tmp_path, monkeypatch):
    """Checked files can still fail to apply (a device out of memory): the weights already written
    are put back."""
    sess, twin, folder = saved
    before = all_parameters(twin)
    real, calls = torch.Tensor.copy_, {"n": 0}

    def failing(self, src, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected while copying the second weight")
        return real(self, src, *a, **k)

    monkeypatch.setattr(torch.Tensor, "copy_", failing)
    with pytest.raises(RuntimeError, match="injected"):
        load(folder, twin, gpt2_tok, tmp_path)
    monkeypatch.setattr(torch.Tensor, "copy_", real)
    assert calls["n"] >= 2
    assert_unchanged(twin, before)


def test_a_session_of_the_first_format_loads(saved, gpt2_tok, tmp_path):
    """Folders written before the manifest (three whole files, the journal in session.json) load,
    and a save into them replaces them with the current layout."""
    sess, twin, folder = saved
    old = tmp_path / "old"
    old.mkdir()
    factors, journal = {}, []
    for e in sess.journal:
        for j, u in enumerate(e.updates):
            factors[f"{e.edit_id}/{j}/keys"], factors[f"{e.edit_id}/{j}/values"] = u.keys_side.double(), u.values_side.double()
        journal.append({"edit_id": e.edit_id, "active": e.active, "requests": [r.to_reference_dict() for r in e.requests],
                        "updates": [{"weight": u.weight_name, "layer": u.layer} for u in e.updates], "times": e.times})
    manifest = json.loads((folder / "session.json").read_text())
    state = {k: manifest[k] for k in ("method", "mode", "options", "solver", "hparams", "templates", "seed", "model",
                                      "model_fingerprint", "next_id")}
    (old / "session.json").write_text(json.dumps({**state, "format": "fastedit-session/1", "journal": journal}))
    save_file(factors, str(old / "journal.safetensors"))
    save_file(weights(sess), str(old / "weights.safetensors"))
    save_file({k: v.contiguous() for k, v in sess._base.items()}, str(old / "base.safetensors"))
    loaded = load(old, twin, gpt2_tok, tmp_path)
    assert [e.active for e in loaded.journal] == [False, True]
    assert loaded.journal[1].updates[0].keys_side.dtype == torch.float32
    for k, w in loaded.edited_weights().items():
        assert torch.equal(w, sess.edited_weights()[k])
    loaded.save(old)
    assert not {"journal.safetensors", "weights.safetensors", "base.safetensors"} & set(files_of(old))
