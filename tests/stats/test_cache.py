"""Statistics caches in the reference layout: names, contents, checks; one pass over all layers."""

import numpy as np
import pytest
import torch

from fastedit.hparams import MEMITHyperParams
from fastedit.models import get_adapter, random_model
from fastedit.stats.cache import (
    SecondMoment,
    StatsMismatchError,
    load_second_moment,
    save_second_moment,
    stats_paths,
)
from fastedit.stats.collect import collect_second_moments
from fastedit.stats.sources import TextSource, open_source
from fastedit.stats.store import SecondMomentStore, StatsMissingError

TEXTS = TextSource("test", ["The cat sat on the mat. " * 5, "Paris is the capital of France.", "", "A b c d e f g " * 9])


def test_reference_names():
    kmeng, alpha = stats_paths("data/stats", "EleutherAI/gpt-j-6B", "wikipedia", "transformer.h.5.mlp.fc_out", "float32", 100000)
    assert str(kmeng) == "data/stats/EleutherAI_gpt-j-6B/wikipedia_stats/transformer.h.5.mlp.fc_out_float32_mom2_100000.npz"
    assert str(alpha) == "data/stats/gpt-j-6B/wikipedia_stats/transformer.h.5.mlp.fc_out_float32_mom2_100000.npz"
    assert len(stats_paths("s", "gpt2-xl", "wikipedia", "x", "float32", 10)) == 1


def test_npz_layout_is_the_references(tmp_path):
    """Exactly the keys kmeng01's SecondMoment/tally write, loadable without pickle."""
    m = torch.randn(6, 6, dtype=torch.float32)
    p = tmp_path / "a.npz"
    save_second_moment(p, SecondMoment(mom2=m, count=11, sample_size=100000))
    with np.load(p, allow_pickle=False) as d:
        assert sorted(d.files) == ["mom2.constructor", "mom2.count", "mom2.mom2", "sample_size"]
        assert str(d["mom2.constructor"]) == "util.runningstats.SecondMoment()"
        assert int(d["mom2.count"]) == 11 and int(d["sample_size"]) == 100000
        assert d["mom2.mom2"].dtype == np.float32
    back = load_second_moment(p)
    assert torch.equal(back.mom2, m) and back.count == 11
    assert torch.allclose(back.moment(), m / 11)


def test_reads_a_reference_written_file(tmp_path):
    """A file as the reference's save_cached_state writes it (np.savez of its state dict)."""
    m = np.random.default_rng(0).standard_normal((5, 5)).astype(np.float32)
    p = tmp_path / "ref.npz"
    np.savez(p, **{"mom2.constructor": "util.runningstats.SecondMoment()", "mom2.count": 3, "mom2.mom2": m, "sample_size": 7})
    s = load_second_moment(p)
    assert s.count == 3 and s.sample_size == 7 and np.array_equal(s.mom2.numpy(), m)


def test_one_pass_equals_one_pass_per_layer(gpt2_tok):
    model = random_model("gpt2", dtype=torch.float64)
    ad = get_adapter(model)
    names = [ad.rewrite_module_tmp.format(l) for l in (0, 2)]
    both = collect_second_moments(model, gpt2_tok, ad, names, TEXTS, None, dtype=torch.float64, progress=False)
    for n in names:
        alone = collect_second_moments(model, gpt2_tok, ad, [n], TEXTS, None, dtype=torch.float64, progress=False)[n]
        assert both[n].count == alone.count
        assert torch.allclose(both[n].mom2, alone.mom2, rtol=1e-12, atol=0)
    # and it is Σ k kᵀ over exactly the non-padding tokens, one document at a time
    n = names[1]
    want, count = torch.zeros_like(both[n].mom2), 0
    from fastedit.models import record
    for text in TEXTS.docs:
        ids = gpt2_tok(text, return_tensors="pt")["input_ids"]
        if ids.shape[1] == 0:
            continue
        with record(model, inputs=[n]) as rec:
            model(input_ids=ids, use_cache=False)
        k = rec.inputs[n][0]
        want += k.T @ k
        count += k.shape[0]
    assert both[n].count == count
    assert float((both[n].mom2 - want).norm() / want.norm()) < 1e-12


def _store(model, tok, tmp_path, **kw):
    # a few short documents: fewer key vectors than the width, accepted here to test the caching
    hp = MEMITHyperParams.from_dict({"layers": [1, 2], "mom2_n_samples": 4, "mom2_min_count": 0})
    return SecondMomentStore(model, tok, get_adapter(model), hp, stats_dir=tmp_path, progress=False, **kw)


def test_store_computes_writes_and_reloads(gpt2_tok, tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join('{"text": "%s"}' % t for t in TEXTS.docs))
    model = random_model("llama")
    store = _store(model, gpt2_tok, tmp_path, source=str(src))
    c = store.second_moment(2)
    assert c.shape == (176, 176) and c.dtype == torch.float32
    path = store.loaded_from[2]
    assert path.exists() and path.with_name(path.name.replace(".npz", ".meta.json")).exists()
    assert "random-llama/wikipedia_stats/model.layers.2.mlp.down_proj_float32_mom2_4.npz" in str(path)
    again = _store(model, gpt2_tok, tmp_path)  # no source: must come from the cache
    assert torch.equal(again.second_moment(2), c)


def test_store_errors(gpt2_tok, tmp_path):
    model = random_model("llama")
    with pytest.raises(StatsMissingError, match="no statistics cache.*stats_source"):
        _store(model, gpt2_tok, tmp_path).second_moment(1)
    # statistics of the wrong size
    store = _store(model, gpt2_tok, tmp_path)
    save_second_moment(store.paths(1)[0], SecondMoment(mom2=torch.eye(10), count=1, sample_size=4))
    with pytest.raises(StatsMismatchError, match="10×10 do not match model.layers.1.mlp.down_proj.*size 176"):
        store.second_moment(1)
    # statistics from another model of the same shape
    src = tmp_path / "docs.txt"
    src.write_text(TEXTS.docs[0])
    other = random_model("llama", seed=1)
    _store(other, gpt2_tok, tmp_path / "o", source=str(src)).second_moment(2)
    with pytest.raises(StatsMismatchError, match="not this model"):
        _store(model, gpt2_tok, tmp_path / "o").second_moment(2)


def test_sources(tmp_path, shared_data):
    src = open_source(shared_data / "wikipedia" / "enwiki_sample.jsonl")
    assert len(src) == 105
    assert src.sample_indices(3) == src.sample_indices(3)  # the references' fixed shuffle
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        open_source(bad)


def test_shipped_sample_is_the_offline_one(shared_data):
    from fastedit.bundled import WIKIPEDIA_SAMPLE

    shipped = open_source(WIKIPEDIA_SAMPLE)
    assert shipped.docs == open_source(shared_data / "wikipedia" / "enwiki_sample.jsonl").docs
    assert not shipped.streamed and shipped.sample_indices(3) == [i for i in shipped.sample_indices(None)][:3]


def test_compressed_sources(tmp_path):
    import gzip
    import lzma

    (tmp_path / "docs").mkdir()
    with lzma.open(tmp_path / "docs" / "a.jsonl.xz", "wt") as f:
        f.write('{"text": "one"}\n"two"\n')
    with gzip.open(tmp_path / "docs" / "b.txt.gz", "wt") as f:
        f.write("three")
    (tmp_path / "docs" / "notes.xz").write_bytes(b"")  # no text suffix under the compression: skipped
    assert open_source(tmp_path / "docs").docs == ["one", "two", "three"]
    with pytest.raises(FileNotFoundError, match="no such file"):
        open_source(tmp_path / "missing.jsonl")


class _FakeStream:
    """A streamed dataset as ``datasets`` returns one: iterable, ``shuffle``, split information."""

    def __init__(self, rows, shuffled=None):
        self.rows, self.shuffled = rows, shuffled
        self.info = type("Info", (), {"splits": {"train": type("Split", (), {"num_examples": len(rows)})()}})()

    def shuffle(self, seed, buffer_size):
        self.shuffled = (seed, buffer_size)
        return _FakeStream(self.rows[::-1], shuffled=self.shuffled)

    def __iter__(self):
        return iter({"text": t} for t in self.rows)


def test_wikipedia_streams_the_current_dump(monkeypatch):
    import sys

    calls, stream = [], _FakeStream([f"article {i}" for i in range(6)])

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return stream

    monkeypatch.setitem(sys.modules, "datasets", type("datasets", (), {"load_dataset": staticmethod(load_dataset)}))
    src = open_source("wikipedia")
    assert calls == [(("wikimedia/wikipedia", "20231101.en"), {"split": "train", "streaming": True})]
    assert stream.shuffled == (1, 10_000) and src.streamed and src.name == "hf:wikimedia/wikipedia/20231101.en"
    assert len(src) == 6 and src.sample_indices(3) == [0, 1, 2]
    assert [src.docs[i] for i in (0, 1, 1, 4, 2)] == ["article 5", "article 4", "article 4", "article 1", "article 3"]
    with pytest.raises(IndexError, match="ended after 6"):
        src.docs[7]
    open_source("someone/corpus:en")
    assert calls[-1][0] == ("someone/corpus", "en")


def test_stream_errors(monkeypatch):
    import sys

    with pytest.raises(FileNotFoundError, match="neither a local file or folder nor a dataset name"):
        open_source("no-such-corpus")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(FileNotFoundError, match=r"optional 'datasets' package.*Wikipedia sample that ships"):
        open_source("wikipedia")

    def offline(*args, **kwargs):
        raise ConnectionError("offline mode is enabled")

    monkeypatch.setitem(sys.modules, "datasets", type("datasets", (), {"load_dataset": staticmethod(offline)}))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"HF_DATASETS_OFFLINE is set.*pass a local text file"):
        open_source("wikipedia")
