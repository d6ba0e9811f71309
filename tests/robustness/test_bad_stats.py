"""Bad statistics files and degenerate statistics: refused on load or after collection with a
message that says what is wrong and how to fix it; a solve that fails its checks fails the edit;
the model bit for bit unchanged, nothing written outside the statistics folder."""

import numpy as np
import pytest
import torch

from fastedit.engine import EditFailedError
from fastedit.errors import NumericalError, PathEscapeError
from fastedit.hparams import MEMITHyperParams
from fastedit.stats.cache import SecondMoment, StatsMismatchError, load_second_moment, save_second_moment, stats_paths
from fastedit.stats.health import StatsHealthError, check_second_moment

from .conftest import GOOD, HP, assert_names_problem, assert_same_state, session, state, tree

WIDTH = 176  # random_model("gpt2")'s key size


def _spd(d=WIDTH, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4 * d, d, generator=g)
    return x.T @ x, 4 * d


def _asym():
    m, n = _spd()
    m[0, 1] += m.abs().max()
    return m, n


BAD = {
    "zero": (lambda: (torch.zeros(WIDTH, WIDTH), 1000), "all zero"),
    "integer": (lambda: (torch.ones(WIDTH, WIDTH, dtype=torch.int64), 1000), "floating point"),
    "inf": (lambda: (torch.full((WIDTH, WIDTH), float("inf")), 1000), "non-finite"),
    "nan": (lambda: (_spd()[0].index_put_((torch.tensor([3]), torch.tensor([3])), torch.tensor(float("nan"))), 1000),
            "non-finite"),
    "negative-definite": (lambda: (-_spd()[0], 1000), "positive semi-definite"),
    "indefinite": (lambda: (torch.diag(torch.linspace(-1, 1, WIDTH)), 1000), "positive semi-definite"),
    "asymmetric": (_asym, "symmetric"),
    "too-few-vectors": (lambda: (_spd()[0], 60), "more text"),
    "huge": (lambda: (_spd()[0] * 1e38, 1000), "non-finite"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_statistics_refused_by_the_check(name):
    make, words = BAD[name]
    mom2, count = make()
    with pytest.raises(StatsHealthError) as e:
        check_second_moment(SecondMoment(mom2=mom2.float() if mom2.is_floating_point() else mom2, count=count), WIDTH)
    assert_names_problem(e.value, words)


@pytest.mark.parametrize("name", list(BAD))
def test_bad_statistics_file_fails_the_edit_and_restores(gpt2_tok, tmp_path, name):
    """Each bad file on disk, through a session: the edit fails naming the problem, the model is
    unchanged and the statistics folder holds only what was there."""
    make, words = BAD[name]
    mom2, count = make()
    sess = session(gpt2_tok, tmp_path / "stats")
    for layer in (1, 2):
        arr = mom2.numpy() if mom2.dtype == torch.int64 else mom2.float().numpy()
        path = sess.stats.paths(layer)[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **{"mom2.mom2": arr, "mom2.count": np.array(count), "sample_size": np.array(6)})
    files = tree(tmp_path)
    before = state(sess.model)
    with pytest.raises(EditFailedError) as e:
        sess.apply(GOOD)
    assert_names_problem(e.value, words)
    assert_same_state(sess.model, before)
    assert tree(tmp_path) == files


@pytest.mark.parametrize("content", [b"not a zip", b"PK\x03\x04broken", None], ids=["garbage", "torn-zip", "pickled"])
def test_unreadable_statistics_file(tmp_path, content):
    path = tmp_path / "s.npz"
    if content is None:
        np.savez(path, **{"mom2.mom2": np.array([object()], dtype=object), "mom2.count": np.array(3)})
    else:
        path.write_bytes(content)
    with pytest.raises(StatsMismatchError, match="s.npz"):
        load_second_moment(path)


@pytest.mark.parametrize("bad", [{"mom2.count": np.array(5)}, {"mom2.mom2": np.eye(3), "mom2.count": np.array(0)},
                                 {"mom2.mom2": np.ones((3, 4)), "mom2.count": np.array(5)}],
                         ids=["no-mom2", "zero-count", "not-square"])
def test_malformed_statistics_file(tmp_path, bad):
    path = tmp_path / "s.npz"
    np.savez(path, **bad)
    with pytest.raises(StatsMismatchError, match="s.npz"):
        load_second_moment(path)


def test_statistics_from_sixty_tokens_are_refused_after_collection(gpt2_tok, tmp_path):
    """About 60 tokens of text: fewer vectors than the width. The statistics used to be cached and
    the edit committed (model-breaking); now the collection is refused, no cache is written, and
    the message says to collect more text."""
    corpus = tmp_path / "short.txt"
    corpus.write_text("The cat sat on the mat and the dog sat on the log. " * 5)
    sess = session(gpt2_tok, tmp_path / "stats", stats_source=str(corpus))
    before = state(sess.model)
    with pytest.raises(EditFailedError) as e:
        sess.apply(GOOD)
    assert_names_problem(e.value, "key vectors", "more text")
    assert_same_state(sess.model, before)
    assert not list((tmp_path / "stats").rglob("*.npz"))


@pytest.mark.parametrize("solver", ["cholesky", "lu"])
def test_singular_statistics_accepted_by_override_still_fail_the_solve(gpt2_tok, tmp_path, solver):
    """mom2_min_count: 0 lets rank-deficient statistics through the load check; the solve's
    conditioning check then refuses them instead of committing a model-breaking edit."""
    x = torch.randn(60, WIDTH, dtype=torch.float64)
    sess = session(gpt2_tok, tmp_path / "stats", {**HP, "mom2_min_count": 0}, solver=solver)
    for layer in (1, 2):
        save_second_moment(sess.stats.paths(layer)[0], SecondMoment(mom2=(x.T @ x).float(), count=60, sample_size=6))
    before = state(sess.model)
    with pytest.raises(EditFailedError) as e:
        sess.apply(GOOD)
    assert isinstance(e.value.__cause__, NumericalError), e.value
    assert_names_problem(e.value, "layer 1")
    assert_same_state(sess.model, before)


def test_a_wrong_solve_is_caught_by_its_residual(gpt2_tok, healthy_stats, monkeypatch):
    from fastedit.methods import memit

    sess = session(gpt2_tok, healthy_stats[0])
    real = memit.WoodburySolver.__call__
    monkeypatch.setattr(memit.WoodburySolver, "__call__", lambda self, l, k: real(self, l, k) * 1.5)
    before = state(sess.model)
    with pytest.raises(EditFailedError, match="backward error"):
        sess.apply(GOOD)
    assert_same_state(sess.model, before)


@pytest.mark.parametrize("dataset", ["../../../x", "..", "a/../../b", "/abs"])
def test_dataset_names_stay_under_the_statistics_folder(tmp_path, dataset):
    with pytest.raises(PathEscapeError):
        stats_paths(tmp_path / "stats", "m", dataset, "layer.{}".format(1), "float32", 6)
    with pytest.raises(Exception) as e:
        MEMITHyperParams.from_dict({"layers": [1], "mom2_dataset": dataset})
    assert_names_problem(e.value, "mom2_dataset")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("model_name", ["..", "../..", "a/.."])
def test_model_names_stay_under_the_statistics_folder(tmp_path, model_name):
    with pytest.raises(PathEscapeError):
        stats_paths(tmp_path / "stats", model_name, "wikipedia", "layer.1", "float32", 6)


@pytest.mark.parametrize("n,ok", [(60, False), (170, False), (2000, True)])
def test_rome_inverse_refuses_singular_statistics(n, ok):
    """ROME's C⁻¹: statistics from fewer vectors than the width are singular to float32 precision."""
    from fastedit.methods.rome import checked_inverse

    x = torch.randn(n, WIDTH, generator=torch.Generator().manual_seed(n))
    c = x.T @ x / n
    if ok:
        assert torch.isfinite(checked_inverse(c, torch.float32, 3)).all()
    else:
        with pytest.raises(NumericalError, match="layer 3"):
            checked_inverse(c, torch.float32, 3)
