"""The plumbing of benchmarks/compare_reference.py's sequential mode that runs without a reference
checkout: the hyperparameter file, AlphaEdit's projection, the step count read from the reference's
log, and the refusal when fastedit lacks the method."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import compare_reference
        import reference_methods
        import reference_sequence

        yield compare_reference, reference_methods, reference_sequence
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def test_nullspace_projection_keeps_the_small_directions(bench):
    _, rm, _ = bench
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    s = torch.tensor([5.0, 2.0, 1.0, 0.5, 0.01, 0.001], dtype=torch.float64)
    cov = (q * s) @ q.T
    P, info = rm.nullspace_projection(cov.float(), 0.02)
    want = q[:, 4:] @ q[:, 4:].T
    assert info["rank"] == 2
    assert info["threshold_margin"] == pytest.approx(0.5, rel=1e-3)  # |0.01 - 0.02| / 0.02
    assert torch.allclose(P.double(), want, atol=1e-5)


@dataclasses.dataclass
class _FakeHParams:
    model_name: str
    layers: list
    v_lr: float
    rewrite_module_tmp: str
    mom2_n_samples: int
    L2: float


def test_reference_hparams_file_takes_shared_settings_and_keeps_the_methods_own(bench, tmp_path):
    _, rm, _ = bench
    folder = tmp_path / "hparams" / "AlphaEdit"
    folder.mkdir(parents=True)
    (folder / "gpt2-xl.json").write_text(json.dumps(
        {"model_name": "gpt2-xl", "layers": [13, 14], "v_lr": 0.5, "rewrite_module_tmp": "x.{}", "mom2_n_samples": 100000,
         "L2": 10}))
    model = torch.nn.Linear(1, 1)
    model.config = type("C", (), {"model_type": "gpt2", "_name_or_path": "random-gpt2"})()
    shared = {"layers": [1, 2], "v_lr": 0.1, "rewrite_module_tmp": "transformer.h.{}.mlp.c_proj", "mom2_n_samples": 20,
              "kl_factor": 0.0625}
    method = rm.REFERENCE_METHODS["alphaedit"]
    data, source = rm.reference_hparams_data(method, _FakeHParams, tmp_path, model, shared, None)
    assert data == {"model_name": "random-gpt2", "layers": [1, 2], "v_lr": 0.1,
                    "rewrite_module_tmp": "transformer.h.{}.mlp.c_proj", "mom2_n_samples": 20, "L2": 10}
    assert set(source["replaced_from_fastedit_memit_settings"]) == {
        "layers", "v_lr", "rewrite_module_tmp", "mom2_n_samples", "model_name"}
    # a file given in the reference layout is used as it is, but for the statistics sample count
    given = tmp_path / "mine.json"
    given.write_text(json.dumps({**data, "L2": 3, "layers": [7, 8]}))
    data, _ = rm.reference_hparams_data(method, _FakeHParams, tmp_path, model, shared, given)
    assert data["L2"] == 3 and data["layers"] == [7, 8] and data["mom2_n_samples"] == 20
    given.write_text(json.dumps({**data, "unexpected": 1}))
    with pytest.raises(SystemExit, match="unknown"):
        rm.reference_hparams_data(method, _FakeHParams, tmp_path, model, shared, given)


def test_optimisation_steps_are_counted_per_edit(bench, tmp_path):
    _, _, rs = bench
    log = tmp_path / "reference.log"
    log.write_text("loss 9 = earlier run\n" + f"{rs._EDIT_MARK}0\nloss 1\nloss 2\nz error 3\n{rs._EDIT_MARK}1\nloss 1\n")
    assert rs._optimisation_steps(log, 0) == [2, 1]
    assert rs._optimisation_steps(log, len("loss 9 = earlier run\n")) == [2, 1]


def test_a_method_fastedit_lacks_is_refused_before_any_work(bench, tmp_path):
    cr, _, rs = bench
    rs.check_fastedit_method("memit")
    with pytest.raises(SystemExit, match="no method 'no-such-method'"):
        rs.check_fastedit_method("no-such-method")
    (tmp_path / "globals.yml").write_text("STATS_DIR: data/stats\n")
    work = tmp_path / "work"
    from fastedit.hparams import HyperParamsError, hparams_class

    try:
        hparams_class("encore")
    except HyperParamsError:
        pass
    else:
        pytest.skip("fastedit has encore: the refusal is shown with a made-up name above")
    with pytest.raises(SystemExit, match="no method 'encore'"):
        cr.main(["--method", "encore", "--reference-dir", str(tmp_path), "--workdir", str(work)])
    assert not work.exists()


def test_results_file_names(bench):
    cr, _, _ = bench
    assert cr.model_short_name("smollm2-135m") == "smollm2"
    assert cr.model_short_name("random:gpt2,n_layer=4") == "gpt2"


def test_per_edit_errors_and_history_difference(bench):
    _, _, rs = bench

    class T:
        wall, cpu = 2.0, 1.5

    names, layers = ["w.1", "w.2"], [1, 2]
    ref_d = [{"w.1": torch.ones(3, 2), "w.2": torch.full((3, 2), 2.0)} for _ in range(2)]
    ours_d = [{"w.1": torch.ones(3, 2), "w.2": torch.full((3, 2), 2.0)}, {"w.1": torch.ones(3, 2) * 1.1, "w.2": torch.zeros(3, 2)}]
    ref = {"edits": [{"delta": d, "timed": T, "info": {}} for d in ref_d],
           "history": {1: torch.eye(3, dtype=torch.float64), 2: torch.eye(3, dtype=torch.float64)}}
    ours = {"edits": [{"delta": d, "timed": T, "info": {}} for d in ours_d],
            "history": {1: 2 * torch.eye(3, dtype=torch.float64), 2: None}}
    recs = rs.edit_records(ref, ours, names, layers)
    assert [r["max_rel_error"] for r in recs] == [0.0, pytest.approx(1.0)]
    assert recs[1]["weights"]["w.1"]["rel_error"] == pytest.approx(0.1)
    assert recs[0]["weights"]["w.2"]["ref_update_norm"] == pytest.approx(2 * 6**0.5)
    # the reference's own fingerprint is the same for the same dW, whoever computes it
    assert recs[0]["weights"]["w.1"]["ref_update_sha256"] == recs[1]["weights"]["w.1"]["ref_update_sha256"]
    assert rs.history_errors(ref, ours) == {"1": pytest.approx(1.0), "2": None}
    assert rs.history_errors(ref, None) is None
    only = rs.edit_records(ref, None, names, layers)
    assert "rel_error" not in only[0]["weights"]["w.1"] and "max_rel_error" not in only[0]


def test_rome_runs_sequentially_with_its_own_settings(bench):
    """``--method rome --edits N``: ROME has a sequential driver beside MEMIT's and the successors',
    its shared settings come from fastedit's ROME preset (not MEMIT's), and ``--stats-samples 0``
    keeps the preset's sample count."""
    from fastedit.models import get_adapter, random_model

    cr, rm, _ = bench
    assert {"rome", "memit", "alphaedit", "emmet", "encore"} <= set(rm.REFERENCE_METHODS)
    rome = rm.REFERENCE_METHODS["rome"]
    assert rome.module == "rome.rome_main" and rome.caches == ()
    model = random_model("gpt2")
    hp = cr.resolve_hparams("rome", "gpt2-xl", model, get_adapter(model), 0)
    assert hp.layers == (17,) and hp.mom2_n_samples == 100000 and hasattr(hp, "context_template_length_params")
    assert cr.resolve_hparams("rome", "gpt2-xl", model, get_adapter(model), 20).mom2_n_samples == 20
    args = cr.build_parser().parse_args(["--reference-dir", ".", "--method", "rome", "--edits", "2", "--mode", "fast"])
    assert args.mode == "fast" and args.edits == 2
