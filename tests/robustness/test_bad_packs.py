"""Edit packs and saved sessions as a careless or hostile user hands them over: every defect is
refused with a typed error that names it, before the model changes and without writing a file."""

import copy
import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from fastedit.engine import EditSession, apply_edit_pack
from fastedit.errors import InputError
from fastedit.models import random_model

from .conftest import GOOD, GROUPS, HP, assert_names_problem, assert_same_state, state, tree

SECOND = "transformer.h.2.mlp.c_proj.weight"
OTHER = {**GOOD, "case_id": 2, "subject": "Danielle Darrieux", "prompt": "The mother tongue of {} is",
         "target_new": "English", "target_true": "French"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory, gpt2_tok, healthy_stats):
    """(pack, session folder, unedited twin of the edited model) after two MEMIT edits."""
    root = tmp_path_factory.mktemp("packs")
    model = random_model("gpt2")
    twin = copy.deepcopy(model)
    sess = EditSession(model, gpt2_tok, "memit", HP, stats_dir=healthy_stats[0], templates=GROUPS, progress=False)
    sess.apply(GOOD)
    sess.apply(OTHER)
    sess.save(root / "session")
    return sess.export_pack(root / "edits.safetensors"), root / "session", twin


def _read(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _refused(model, call, *words):
    """``call()`` raises an :class:`InputError` naming ``words``; the model is unchanged."""
    before = state(model)
    with pytest.raises(InputError) as e:
        call()
    assert_names_problem(e.value, *words)
    assert_same_state(model, before)


# ---------------------------------------------------------------------------- edit packs
def _set(name, value):
    return lambda t, m: t.__setitem__(name, value(t[name]))


PACK_DEFECTS = {
    "NaN in values": (_set(f"{SECOND}/values", lambda x: x.index_fill(0, torch.tensor([0]), float("nan"))), ["non-finite"]),
    "inf in keys": (_set(f"{SECOND}/keys", lambda x: x.index_fill(0, torch.tensor([3]), float("inf"))), ["non-finite"]),
    "keys cut to one row": (_set(f"{SECOND}/keys", lambda x: x[:1].contiguous()), ["shape"]),
    "values cut to one row": (_set(f"{SECOND}/values", lambda x: x[:1].contiguous()), ["shape"]),
    "ranks disagree": (_set(f"{SECOND}/values", lambda x: torch.cat([x, x], 1)), ["shape"]),
    "float16 keys": (_set(f"{SECOND}/keys", lambda x: x.half()), ["dtype"]),
    "integer values": (_set(f"{SECOND}/values", lambda x: x.long()), ["dtype"]),
    "keys without values": (lambda t, m: t.pop(f"{SECOND}/values"), ["exactly the tensors"]),
    "an attention weight": (lambda t, m: t.update({"transformer.h.1.attn.c_proj.weight/keys": torch.ones(64, 1),
                                                   "transformer.h.1.attn.c_proj.weight/values": torch.ones(64, 1)}),
                            ["not a weight the editing methods change"]),
    "a layer the model lacks": (lambda t, m: t.update({"transformer.h.9.mlp.c_proj.weight/keys": torch.ones(176, 1),
                                                       "transformer.h.9.mlp.c_proj.weight/values": torch.ones(64, 1)}),
                                ["transformer.h.9"]),
    "a path as a weight name": (lambda t, m: t.update({"../../etc/passwd/keys": torch.ones(1, 1),
                                                       "../../etc/passwd/values": torch.ones(1, 1)}),
                                ["../../etc/passwd"]),
    "overflowing product": (lambda t, m: t.update({f"{SECOND}/keys": torch.full_like(t[f"{SECOND}/keys"], 1e30),
                                                   f"{SECOND}/values": torch.full_like(t[f"{SECOND}/values"], 1e30)}),
                            ["non-finite"]),
    "another format": (lambda t, m: m.__setitem__("format", "something-else/1"), ["format"]),
    "another model": (lambda t, m: m.__setitem__("model_fingerprint", "0" * 16), ["model"]),
    "another weight layout": (lambda t, m: m.__setitem__("weight_layout", "out_in"), ["layout"]),
}


@pytest.mark.parametrize("defect", sorted(PACK_DEFECTS))
def test_defective_pack(saved, tmp_path, defect):
    pack, _, twin = saved
    tensors, meta = _read(pack)
    change, words = PACK_DEFECTS[defect]
    change(tensors, meta)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    model, files = copy.deepcopy(twin), tree(tmp_path)
    _refused(model, lambda: apply_edit_pack(model, bad), *words)
    assert tree(tmp_path) == files


@pytest.mark.parametrize("content", [b"", b"not a pack", b"\x00" * 64, json.dumps({"a": 1}).encode()])
def test_unreadable_pack(saved, tmp_path, content):
    _, _, twin = saved
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    model = copy.deepcopy(twin)
    _refused(model, lambda: apply_edit_pack(model, bad), "edit pack")


def test_missing_pack(saved, tmp_path):
    model = copy.deepcopy(saved[2])
    _refused(model, lambda: apply_edit_pack(model, tmp_path / "nowhere.safetensors"), "no such edit pack")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(0, 300), cols=st.integers(0, 3), which=st.sampled_from(["keys", "values"]))
def test_pack_factors_of_any_other_shape(saved, tmp_path_factory, rows, cols, which):
    """Factors of any shape but the weight's are refused: none is broadcast into the weight."""
    pack, _, twin = saved
    tensors, meta = _read(pack)
    right = tensors[f"{SECOND}/{which}"].shape
    if (rows, cols) == tuple(right):
        return
    tensors[f"{SECOND}/{which}"] = torch.ones(rows, cols)
    bad = tmp_path_factory.mktemp("shape") / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    model = copy.deepcopy(twin)
    _refused(model, lambda: apply_edit_pack(model, bad), SECOND.rsplit(".", 1)[0])


# ---------------------------------------------------------------------------- saved sessions
def _copy_session(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _weights_file(folder):
    meta = json.loads((folder / "session.json").read_text())
    return folder / meta["files"]["weights"] if "files" in meta else next(folder.glob("weights*.safetensors"))


def _rewrite_weights(folder, change):
    path = _weights_file(folder)
    tensors, meta = _read(path)
    change(tensors)
    save_file(tensors, str(path), metadata=meta)


SESSION_DEFECTS = {
    "NaN weight": (lambda t: t.__setitem__(next(iter(t)), t[next(iter(t))].index_fill(0, torch.tensor([0]),
                                                                                         float("nan"))), "non-finite"),
    "float16 weight": (lambda t: t.__setitem__(next(iter(t)), t[next(iter(t))].half()), "dtype"),
    "(1, d) weight": (lambda t: t.__setitem__(next(iter(t)), t[next(iter(t))][:1].contiguous()), "shape"),
    "missing weight": (lambda t: t.pop(sorted(t)[-1]), "missing"),
}


@pytest.mark.parametrize("defect", sorted(SESSION_DEFECTS))
def test_defective_session_weights(saved, tmp_path, gpt2_tok, healthy_stats, defect):
    _, folder, twin = saved
    bad = _copy_session(folder, tmp_path / "session")
    change, word = SESSION_DEFECTS[defect]
    _rewrite_weights(bad, change)
    model = copy.deepcopy(twin)
    _refused(model, lambda: EditSession.load(bad, model, gpt2_tok, stats_dir=healthy_stats[0], progress=False), word)


@pytest.mark.parametrize("content", ["", "{", "[]", json.dumps({"format": "fastedit-session/99"})])
def test_malformed_session_manifest(saved, tmp_path, gpt2_tok, healthy_stats, content):
    _, folder, twin = saved
    bad = _copy_session(folder, tmp_path / "session")
    (bad / "session.json").write_text(content)
    model = copy.deepcopy(twin)
    _refused(model, lambda: EditSession.load(bad, model, gpt2_tok, stats_dir=healthy_stats[0], progress=False),
             "session")


def test_session_of_another_model(saved, tmp_path, gpt2_tok, healthy_stats):
    _, folder, _ = saved
    model = random_model("gpt2", seed=7)
    _refused(model, lambda: EditSession.load(folder, model, gpt2_tok, stats_dir=healthy_stats[0], progress=False),
             "not this one")
