"""Names from saved sessions and from requests that become paths: refused before anything is
written outside the chosen folder; a saved session whose hyperparameters were tampered with is
refused by field, the model unchanged."""

import json

import pytest

from fastedit import compat
from fastedit.engine import EditSession
from fastedit.errors import InputError
from fastedit.models import random_model

from .conftest import GOOD, GROUPS, HP, assert_names_problem, assert_same_state, state, tree


@pytest.fixture(scope="module")
def saved_session(tmp_path_factory, gpt2_tok, healthy_stats):
    """A session saved after no edits (its hparams and layout are what the load reads)."""
    path = tmp_path_factory.mktemp("sess") / "session"
    sess = EditSession(random_model("gpt2"), gpt2_tok, "memit", HP, stats_dir=healthy_stats[0], templates=GROUPS,
                       progress=False)
    sess.save(path)
    return path


TAMPERED = [
    ("mom2_dataset", "../../../x"), ("mom2_dataset", "a/b"), ("layers", "12"), ("layers", [1.9, 2.2]),
    ("clamp_norm_factor", None), ("v_lr", -0.5), ("rewrite_module_tmp", "transformer.h.1.mlp.c_proj"),
]


@pytest.mark.parametrize("field,value", TAMPERED, ids=[f"{f}={v!r}" for f, v in TAMPERED])
def test_tampered_session_hparams_refused(saved_session, tmp_path, gpt2_tok, healthy_stats, field, value):
    bad = tmp_path / "session"
    bad.mkdir()
    for f in saved_session.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    meta = json.loads((bad / "session.json").read_text())
    meta["hparams"][field] = value
    (bad / "session.json").write_text(json.dumps(meta))
    model = random_model("gpt2")
    before, files = state(model), tree(tmp_path.parent)
    with pytest.raises(InputError) as e:
        EditSession.load(bad, model, gpt2_tok, stats_dir=healthy_stats[0], progress=False)
    assert_names_problem(e.value, field)
    assert_same_state(model, before)
    assert tree(tmp_path.parent) == files


@pytest.mark.parametrize("case_id", ["../..", "..", "a/b", "../../../../tmp/x", None])
def test_cache_template_case_ids_stay_in_their_folder(tmp_path, gpt2_tok, healthy_stats, monkeypatch, case_id):
    """The drop-in ``cache_template`` formats the case id into a file name: one that leads out of
    the template's folder (or is missing) is refused before any work."""
    monkeypatch.setenv("FASTEDIT_STATS_DIR", str(healthy_stats[0]))
    model = random_model("gpt2")
    compat.set_context_templates(model, "memit", GROUPS)
    req = {**GOOD, "case_id": case_id}
    hp = compat.MEMITHyperParams.from_dict({**HP})
    template = str(tmp_path / "cache" / "z" / "layer_{}_clamp_{}_case_{}.npz")
    before, files = state(model), tree(tmp_path)
    with pytest.raises(InputError) as e:
        compat.execute_memit(model, gpt2_tok, [req], hp, cache_template=template)
    assert_names_problem(e.value, "case_id")
    assert_same_state(model, before)
    assert tree(tmp_path) == files and not (tmp_path / "cache").exists()
