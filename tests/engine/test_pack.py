"""Edit packs: export, apply to the base model, refuse a defective pack with the model unchanged."""

import copy

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fastedit.engine import apply_edit_pack
from fastedit.models import random_model

from .helpers import REQS, all_parameters, assert_unchanged, make


@pytest.fixture()
def packed(gpt2_tok, tmp_path, corpus):
    """An edit pack of two edits, the session that wrote it and an unedited twin of its model."""
    model = random_model("gpt2")
    base = copy.deepcopy(model)
    sess = make(gpt2_tok, tmp_path, corpus, model=model)
    sess.apply(REQS[0])
    sess.apply(REQS[1])
    return sess, base, sess.export_pack(tmp_path / "edits.safetensors")


def test_edit_pack(packed):
    sess, base, pack = packed
    assert pack.stat().st_size < 20_000  # factors only
    names = apply_edit_pack(base, pack)
    assert names == sorted(sess.edited_weights())
    for k, w in sess.edited_weights().items():
        assert torch.allclose(base.get_parameter(k), w, atol=1e-6)
    with pytest.raises(ValueError, match="not this one"):
        apply_edit_pack(random_model("gpt2", seed=5), pack)


def _rewrite(pack, change):
    with safe_open(str(pack), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    change(tensors)
    save_file(tensors, str(pack), metadata=meta)


SECOND = "transformer.h.2.mlp.c_proj.weight"
DEFECTS = {
    "NaN factors": (lambda t: t[f"{SECOND}/values"].view(-1).__setitem__(0, float("nan")), "non-finite"),
    "attention weight": (lambda t: t.update({"transformer.h.1.attn.c_proj.weight/keys": torch.ones(64, 1),
                                             "transformer.h.1.attn.c_proj.weight/values": torch.ones(64, 1)}),
                         "not a weight the editing methods change"),
    "(1, d) keys": (lambda t: t.__setitem__(f"{SECOND}/keys", t[f"{SECOND}/keys"][:1].contiguous()), "shape"),
    "float16 factors": (lambda t: t.__setitem__(f"{SECOND}/keys", t[f"{SECOND}/keys"].half()), "dtype"),
    "values without keys": (lambda t: t.pop(f"{SECOND}/keys"), "exactly the tensors"),
    # finite factors whose product overflows float32: found only while applying the second weight
    "fails on its second weight": (lambda t: t.update({f"{SECOND}/keys": torch.full_like(t[f"{SECOND}/keys"], 1e30),
                                                       f"{SECOND}/values": torch.full_like(t[f"{SECOND}/values"], 1e30)}),
                                   "non-finite"),
}


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_a_defective_pack_is_refused_with_the_model_unchanged(defect, packed):
    sess, base, pack = packed
    change, message = DEFECTS[defect]
    _rewrite(pack, change)
    before = all_parameters(base)
    with pytest.raises(ValueError, match=message):
        apply_edit_pack(base, pack)
    assert_unchanged(base, before)
