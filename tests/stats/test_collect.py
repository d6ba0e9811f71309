"""The pass: early stops (convergence, key-vector limit), the curve, the baseline it is measured against."""

import json
import math

import pytest
import torch

from fastedit.hparams import MEMITHyperParams
from fastedit.models import get_adapter, random_model
from fastedit.stats.collect import _rel_change, _sym_fro2, collect
from fastedit.stats.reference import reference_batches, reference_second_moments
from fastedit.stats.sources import TextSource
from fastedit.stats.store import SecondMomentStore

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


def _texts(n: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(3, 60, (1,), generator=g))
        out.append(" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (k,), generator=g)))
    return out


SRC = TextSource("words", _texts(40))


def test_frobenius_from_the_lower_triangle():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(37, 37, generator=g, dtype=torch.float64), torch.randn(37, 37, generator=g, dtype=torch.float64)
    a, b = x + x.T, y + y.T
    junk = torch.triu(torch.randn(37, 37, generator=g, dtype=torch.float64), 1)  # upper triangle is undefined
    assert math.isclose(_sym_fro2(torch.tril(a) + junk, panel=8), float(a.square().sum()), rel_tol=1e-12)
    want = float((a / 3 - b / 5).norm() / (a / 3).norm())
    assert math.isclose(_rel_change(torch.tril(a) + junk, 3, torch.tril(b) - junk, 5, panel=8), want, rel_tol=1e-12)


def test_max_tokens_and_convergence_stop_early(gpt2_tok):
    model = random_model("gpt2")
    names = [get_adapter(model).rewrite_module_tmp.format(1)]
    kw = dict(max_len=32, rows=2, progress=False)
    full = collect(model, gpt2_tok, None, names, SRC, None, check_every=64, **kw).report
    assert full.stop_reason == "corpus" and full.curve[0]["rel_change"][names[0]] is None
    assert [p["tokens"] for p in full.curve] == sorted(p["tokens"] for p in full.curve)
    assert full.curve[-1]["tokens"] == full.tokens

    cut = collect(model, gpt2_tok, None, names, SRC, None, max_tokens=300, **kw).report
    assert cut.stop_reason == "max_tokens" and 300 <= cut.tokens < 300 + 64

    changes = [p["rel_change"][names[0]] for p in full.curve[1:]]
    tol = sorted(changes)[len(changes) // 2]  # met half-way through the sample
    conv = collect(model, gpt2_tok, None, names, SRC, None, check_every=64, converge=tol, **kw).report
    assert conv.stop_reason == "converged" and conv.tokens < full.tokens
    assert conv.curve[-1]["rel_change"][names[0]] < tol
    assert all(p["rel_change"][names[0]] >= tol for p in conv.curve[1:-1])


def test_store_records_the_pass_in_the_sidecar(gpt2_tok, tmp_path):
    src = tmp_path / "words.jsonl"
    src.write_text("\n".join(json.dumps({"text": t}) for t in SRC.docs) + "\n")
    model = random_model("llama")
    hp = MEMITHyperParams.from_dict({"layers": [1, 2], "mom2_n_samples": 40})
    store = SecondMomentStore(model, gpt2_tok, get_adapter(model), hp, stats_dir=tmp_path, source=str(src),
                              progress=False, max_len=32, rows=2, max_vectors_factor=2.0)
    store.ensure([1, 2])
    assert store.report.stop_reason == "max_tokens" and store.report.tokens >= 2 * 176
    meta = json.loads(store.loaded_from[2].with_name(store.loaded_from[2].name[:-4] + ".meta.json").read_text())
    assert meta["layers"] == ["model.layers.1.mlp.down_proj", "model.layers.2.mlp.down_proj"]
    assert meta["tokens"] == store.report.tokens and meta["stop_reason"] == "max_tokens"
    assert meta["model_dtype"] == "float32" and meta["max_len"] == 32 and meta["corpus"] == str(src.resolve())
    assert meta["convergence"] and meta["convergence"][-1]["tokens"] == meta["tokens"]


def test_reference_procedure(gpt2_tok):
    """The baseline: per-layer passes over padded batches give the same sums as the packed pass."""
    docs = [[1] * n for n in (5, 9, 3, 9, 1, 0, 7)]
    batches = reference_batches(docs, batch_tokens=18)
    assert [[len(d) for d in b] for b in batches] == [[9, 9], [7, 5], [3, 1]]
    model = random_model("gptj", dtype=torch.float64)
    names = [get_adapter(model).rewrite_module_tmp.format(layer) for layer in (0, 2)]
    ours = collect(model, gpt2_tok, None, names, SRC, None, dtype=torch.float64, max_len=32, progress=False).stats
    for stop in (False, True):
        ref = reference_second_moments(model, gpt2_tok, names, SRC, None, dtype=torch.float64, max_len=32, stop=stop)
        for n in names:
            assert ref[n].count == ours[n].count
            err = float((ref[n].mom2 - ours[n].mom2).norm() / ref[n].mom2.norm())
            assert err < 1e-6, f"{n}: {err:.2e}"  # GPT-J's attention scores are float32 inside


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_accumulation_dtype(dtype, gpt2_tok):
    model = random_model("gpt2")
    name = get_adapter(model).rewrite_module_tmp.format(0)
    out = collect(model, gpt2_tok, None, [name], SRC, 10, dtype=dtype, max_len=32, progress=False)
    m = out.stats[name].mom2
    assert m.dtype == dtype and torch.equal(m, m.T) and out.report.model_dtype == "float32"
