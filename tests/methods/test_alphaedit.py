"""AlphaEdit: its hyperparameter files, and fastedit's updates against the plain implementation of
jianghoucheng/AlphaEdit's formulas (``fastedit.methods.plain.alphaedit``) in float64."""

import json

import pytest
import torch

from fastedit.hparams import PRESET_DIR, PRESET_SOURCES, HyperParamsError
from fastedit.methods.alphaedit import AlphaEditHyperParams
from fastedit.methods import plain

PRESETS = ["gpt2-xl", "gpt-j-6b", "llama-3-8b"]


def reference_file(preset: str) -> dict:
    """The shipped preset as AlphaEdit's own file lays it out: its keys only (no fastedit additions)."""
    data = json.loads((PRESET_DIR / "AlphaEdit" / f"{preset}.json").read_text())
    data.pop("subject_index_rule", None)
    data.pop("strip_target_bos", None)
    return data


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load_and_name_their_source(preset):
    hp = AlphaEditHyperParams.preset(preset)
    assert hp.subject_index_rule == "concat" and hp.strip_target_bos
    assert ("AlphaEdit", preset) in PRESET_SOURCES
    assert hp.nullspace_threshold > 0 and hp.L2 > 0


@pytest.mark.parametrize("preset", PRESETS)
def test_reads_alphaedit_file_layout(preset, tmp_path):
    """AlphaEdit's files (model_name, mom2_update_weight, nullspace_threshold, L2, no index rule) read
    unchanged, with the concat rule and BOS stripping its code always uses."""
    data = reference_file(preset)
    assert {"model_name", "nullspace_threshold", "L2", "mom2_update_weight", "attn_module_tmp"} <= set(data)
    path = tmp_path / "hp.json"
    path.write_text(json.dumps(data))
    hp = AlphaEditHyperParams.from_json(path)
    assert hp.nullspace_threshold == 2e-2 and hp.L2 == 10
    assert hp.subject_index_rule == "concat" and hp.strip_target_bos
    assert hp.layers == tuple(data["layers"]) and hp.model_name == data["model_name"]
    assert AlphaEditHyperParams.from_dict(hp.to_dict()) == hp


@pytest.mark.parametrize(
    "key,value",
    [("nullspace_threshold", "2e-2"), ("nullspace_threshold", 0), ("nullspace_threshold", float("nan")),
     ("L2", 0), ("L2", -1.0), ("L2", True), ("L2", "10")],
)
def test_rejects_bad_fields_by_name(key, value):
    data = reference_file("gpt2-xl")
    data[key] = value
    with pytest.raises(HyperParamsError, match=key):
        AlphaEditHyperParams.from_dict(data)


def test_rejects_unknown_and_missing_keys():
    data = reference_file("gpt2-xl")
    with pytest.raises(HyperParamsError, match="nullspace_treshold"):
        AlphaEditHyperParams.from_dict({**data, "nullspace_treshold": 0.01})
    del data["layers"]
    with pytest.raises(HyperParamsError, match="layers"):
        AlphaEditHyperParams.from_dict(data)


def test_null_space_projection_keeps_small_directions():
    """P = U_r U_rᵀ over the singular values below the threshold: a projection (P² = P, symmetric)
    of rank r that annihilates the large directions."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(9, 9, generator=gen, dtype=torch.float64))
    s = torch.tensor([5.0, 3.0, 1.0, 0.5, 0.2, 0.01, 0.005, 0.001, 0.0], dtype=torch.float64)
    c = q @ torch.diag(s) @ q.T
    p = plain.null_space_projection(c, 0.02)
    assert torch.allclose(p, p.T, atol=1e-12) and torch.allclose(p @ p, p, atol=1e-12)
    assert round(float(p.trace())) == 4
    assert torch.allclose(p @ q[:, :5], torch.zeros(9, 5, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(p @ q[:, 5:], q[:, 5:], atol=1e-12)
