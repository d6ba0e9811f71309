"""The method registry: lookup, resolved hyperparameters, and the edit history a method can keep."""

import re
from pathlib import Path

import pytest
import torch

import fastedit
from fastedit.engine import EditSession
from fastedit.errors import InputError
from fastedit.hparams import MEMITHyperParams, ROMEHyperParams, hparams_class
from fastedit.methods import registry
from fastedit.methods.memit import MEMIT
from fastedit.models import get_adapter, random_model

from .helpers import GROUPS, HP, REQS


def test_lookup():
    names = registry.method_names()
    assert {"rome", "r-rome", "memit"} <= set(names)
    assert registry.get_method("MEMIT") is MEMIT
    assert hparams_class("rome") is ROMEHyperParams
    with pytest.raises(InputError, match="unknown method 'nope'; methods: .*memit"):
        registry.get_method("nope")
    assert registry.easyedit_names()["MEMIT"] == "memit"
    for name in names:
        cls = registry.get_method(name)
        assert cls.hparams_class.METHOD == name and cls.templates in ("flat", "groups")


def test_cli_offers_every_registered_method(capsys):
    from fastedit.cli import _parser

    with pytest.raises(SystemExit):
        _parser().parse_args(["edit", "--method", "nope", "--model", "m", "--requests", "r", "--out", "o"])
    err = capsys.readouterr().err
    assert "invalid choice: 'nope'" in err and all(f"'{n}'" in err for n in registry.method_names())


def test_no_method_name_checks_outside_the_methods():
    """Dispatch goes through the registry: no ``method == "..."`` comparisons in the package."""
    root = Path(fastedit.__file__).parent
    pattern = re.compile(r"""method\w*\s*(==|!=|in|not in)\s*[\("'\[]""")
    found = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
             if pattern.search(line)]
    assert not found, found


def test_hyperparameters_are_resolved_once(gpt2_tok, tmp_path, corpus):
    model = random_model("gpt2")
    sess = EditSession(model, gpt2_tok, "memit", HP, templates=GROUPS, stats_dir=tmp_path, stats_source=str(corpus),
                       progress=False)
    ad = get_adapter(model)
    hp = sess.hp
    assert (hp.rewrite_module_tmp, hp.layer_module_tmp, hp.mlp_module_tmp, hp.attn_module_tmp, hp.ln_f_module) == (
        ad.rewrite_module_tmp, ad.layer_module_tmp, ad.mlp_module_tmp, ad.attn_module_tmp, ad.ln_f_module)
    assert hp.lm_head_module == ad.lm_head_name(model)
    assert MEMITHyperParams.from_dict(hp.to_dict()) == hp  # a saved session reads its names back
    custom = MEMITHyperParams.from_dict({**HP, "rewrite_module_tmp": "transformer.h.{}.mlp.c_proj"}).resolve(ad, model)
    assert custom.rewrite_module_tmp == "transformer.h.{}.mlp.c_proj"


class _KeepsHistory(MEMIT):
    """MEMIT that remembers its keys, to exercise the session's edit-history plumbing."""

    name = "test-keeps-history"
    calls: list

    def __init__(self, session):
        super().__init__(session)
        self.calls = []

    def solve(self, layer, k):
        self._last = getattr(self, "_last", {})
        self._last[layer] = k.float()
        return super().solve(layer, k)

    def compute(self, requests, precomputed_z=None):
        out = super().compute(requests, precomputed_z)
        out.history = dict(self._last)
        return out

    def history_added(self, layer, keys):
        self.calls.append(("added", layer, keys.shape[1]))

    def history_changed(self, layer):
        self.calls.append(("changed", layer))


@pytest.fixture
def keeps_history(monkeypatch):
    monkeypatch.setitem(registry.METHODS, _KeepsHistory.name, _KeepsHistory)
    monkeypatch.setattr(_KeepsHistory, "hparams_class", MEMITHyperParams)
    return _KeepsHistory.name


def _session(name, tok, tmp_path, corpus, model=None):
    model = model if model is not None else random_model("gpt2", dtype=torch.float64)
    return EditSession(model, tok, name, HP, templates=GROUPS, stats_dir=tmp_path / "stats", stats_source=str(corpus),
                       progress=False)


def test_edit_history_is_recorded_undone_saved_and_loaded(keeps_history, gpt2_tok, tmp_path, corpus):
    sess = _session(keeps_history, gpt2_tok, tmp_path, corpus)
    base = random_model("gpt2", dtype=torch.float64)
    first, second = sess.apply(REQS[0]), sess.apply(REQS[1:3])
    keys = {e.edit_id: e.history for e in sess.journal}
    assert set(keys[first.edit_id]) == set(HP["layers"]) and keys[second.edit_id][1].shape[1] == 2
    assert ("added", 1, 2) in sess.editor.calls
    for layer in HP["layers"]:
        k = torch.cat([keys[0][layer], keys[1][layer]], 1).double()
        assert torch.allclose(sess.edit_history.gram(layer), k @ k.T)
        assert sess.edit_history.columns(layer) == 3
    sess.save(tmp_path / "s")
    loaded = EditSession.load(tmp_path / "s", base, gpt2_tok, stats_dir=tmp_path / "stats", progress=False)
    for layer in HP["layers"]:
        assert torch.equal(loaded.edit_history.gram(layer), sess.edit_history.gram(layer))
    version = sess.edit_history.version(1)
    sess.undo(first.edit_id)
    assert ("changed", 1) in sess.editor.calls and sess.edit_history.version(1) != version
    k = keys[1][1].double()
    assert torch.allclose(sess.edit_history.gram(1), k @ k.T)


def test_saved_history_is_checked(keeps_history, gpt2_tok, tmp_path, corpus):
    from safetensors.torch import load_file, save_file

    sess = _session(keeps_history, gpt2_tok, tmp_path, corpus)
    sess.apply(REQS[0])
    sess.save(tmp_path / "s")
    seg = next((tmp_path / "s").glob("journal-*.safetensors"))
    tensors = load_file(seg)
    from safetensors import safe_open

    with safe_open(str(seg), framework="pt") as f:
        meta = f.metadata()
    tensors["0/history/1"] = torch.full_like(tensors["0/history/1"], float("nan"))
    save_file(tensors, seg, metadata=meta)
    before = {k: w.detach().clone() for k, w in random_model("gpt2", dtype=torch.float64).named_parameters()}
    base = random_model("gpt2", dtype=torch.float64)
    with pytest.raises(InputError, match="history keys at layer 1.*non-finite"):
        EditSession.load(tmp_path / "s", base, gpt2_tok, stats_dir=tmp_path / "stats", progress=False)
    assert all(torch.equal(w, before[k]) for k, w in base.named_parameters())


def test_rome_family_computes_one_request_at_a_time(gpt2_tok, tmp_path, corpus):
    hp = {"layers": [1], "v_num_grad_steps": 2, "mom2_n_samples": 6}
    sess = EditSession(random_model("gpt2"), gpt2_tok, "rome", hp, templates=["{}"], stats_dir=tmp_path,
                       stats_source=str(corpus), progress=False)
    with pytest.raises(InputError, match="rome computes one request at a time"):
        sess.compute(REQS[:2])
    with pytest.raises(InputError, match="list of strings"):
        EditSession(random_model("gpt2"), gpt2_tok, "r-rome", hp, templates=[["{}"]], progress=False)


def test_edit_history_holds_a_gram_sum_only_when_asked(keeps_history, gpt2_tok, tmp_path, corpus):
    """``gram(layer, keep=False)`` (for a method that grows its own copy) holds nothing; a kept sum
    follows later edits; both equal the sum over the journal's keys."""
    sess = _session(keeps_history, gpt2_tok, tmp_path, corpus)
    sess.apply(REQS[0])
    hist = sess.edit_history

    def want():
        k = torch.cat([e.history[1] for e in sess.journal], 1).double()
        return k @ k.T

    assert torch.allclose(hist.gram(1, keep=False), want()) and 1 not in hist._gram
    sess.apply(REQS[1])
    assert torch.allclose(hist.gram(1, keep=False), want()) and 1 not in hist._gram
    assert torch.allclose(hist.gram(1), want()) and 1 in hist._gram
    sess.apply(REQS[2])
    assert torch.allclose(hist.gram(1, keep=False), want())
