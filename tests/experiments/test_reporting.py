"""--report-to: TensorBoard and wandb beside the JSONL logs, with fake tracker modules (both optional)."""

import json
import sys
import types

import pytest

from fastedit.experiments.reporting import ReporterUnavailableError, flatten_numbers, make_reporter, require_reporter
from fastedit.experiments.sequential import RunConfig, run_sequential
from fastedit.models import random_model
from textdata import write_stats_corpus


def test_flatten_numbers():
    point = {"edits": 3, "all_edits": {"score": 0.5, "n": 2}, "by_age": [1.0, None, 0.0], "flag": True, "name": "x",
             "norm_growth": {"h.1.mlp": {"relative": 0.25}}}
    assert flatten_numbers(point, "c/") == {"c/edits": 3.0, "c/all_edits/score": 0.5, "c/all_edits/n": 2.0,
                                            "c/by_age/0": 1.0, "c/by_age/2": 0.0, "c/norm_growth/h.1.mlp/relative": 0.25}


class FakeWriter:
    instances = []

    def __init__(self, log_dir, purge_step=None):
        self.log_dir, self.purge_step, self.scalars, self.closed = log_dir, purge_step, [], False
        FakeWriter.instances.append(self)

    def add_scalar(self, name, value, step):
        self.scalars.append((name, value, step))

    def flush(self):
        pass

    def close(self):
        self.closed = True


class FakeWandbRun:
    def __init__(self, kwargs):
        self.kwargs, self.logged, self.finished = kwargs, [], False

    def log(self, data, step):
        self.logged.append((data, step))

    def finish(self):
        self.finished = True


def fake_wandb():
    module = types.ModuleType("wandb")
    module.runs = []
    module.util = types.SimpleNamespace(generate_id=lambda: "abc123")

    def init(**kwargs):
        module.runs.append(FakeWandbRun(kwargs))
        return module.runs[-1]

    module.init = init
    return module


@pytest.fixture(scope="module")
def setup(tmp_path_factory, gpt2_tok):
    root = tmp_path_factory.mktemp("report")
    random_model("gpt2").save_pretrained(root / "tiny-gpt2")
    gpt2_tok.save_pretrained(root / "tiny-gpt2")
    (root / "hp.json").write_text(json.dumps({
        "layers": [1], "v_num_grad_steps": 2, "v_loss_layer": 3, "mom2_update_weight": 10.0, "mom2_n_samples": 6,
    }))
    write_stats_corpus(root / "corpus.jsonl")
    return root


def config(setup, edits=2):
    return RunConfig(model=str(setup / "tiny-gpt2"), hparams=str(setup / "hp.json"), edits=edits, eval_every=1,
                     downstream_n=0, stats_source=str(setup / "corpus.jsonl"), stats_dir=str(setup / "stats"),
                     stats_max_len=128, device="cpu")


def test_tensorboard(setup, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    FakeWriter.instances.clear()
    out = tmp_path / "run"
    run_sequential(config(setup), out, progress=False, stop_after=1, report_to="tensorboard")
    run_sequential(config(setup), out, progress=False, report_to="tensorboard")  # resumed after edit 1
    first, resumed = FakeWriter.instances
    assert first.log_dir == str(out / "tensorboard") and first.purge_step is None and resumed.purge_step == 1
    assert first.closed and resumed.closed
    steps = lambda w, name: [s for n, _, s in w.scalars if n == name]  # noqa: E731
    assert steps(first, "edit/update_norm") == [1] and steps(resumed, "edit/update_norm") == [2]
    assert steps(first, "checkpoint/seconds") == [0, 1] and steps(resumed, "checkpoint/seconds") == [2]
    edits = [json.loads(line) for line in (out / "edits.jsonl").read_text().splitlines()]
    assert [v for n, v, s in first.scalars + resumed.scalars if n == "edit/update_norm"] == [e["update_norm"] for e in edits]
    assert json.loads((out / "config.json").read_text())["runtime"]["report_to"] == "tensorboard"


def test_wandb_offline_by_default(setup, tmp_path, monkeypatch):
    wandb = fake_wandb()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "run"
    run_sequential(config(setup, edits=1), out, progress=False, report_to="wandb")
    (run,) = wandb.runs
    assert run.kwargs["mode"] == "offline" and run.kwargs["id"] == "abc123" and run.kwargs["dir"] == str(out)
    assert run.kwargs["config"]["run"]["edits"] == 1 and run.finished
    assert [step for _, step in run.logged] == [0, 1, 1]  # checkpoint 0, edit 1, checkpoint 1
    monkeypatch.setenv("WANDB_MODE", "disabled")
    wandb.util.generate_id = lambda: "other"
    make_reporter("wandb", out, {}, 1).close()  # a resumed run continues the same wandb run
    assert wandb.runs[-1].kwargs["id"] == "abc123" and wandb.runs[-1].kwargs["mode"] == "disabled"


@pytest.mark.parametrize("kind,module", [("tensorboard", "torch.utils.tensorboard"), ("wandb", "wandb")])
def test_missing_package_is_a_clear_error(setup, tmp_path, monkeypatch, kind, module):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(ReporterUnavailableError, match=rf"--report-to {kind} needs the optional package.*pip install"):
        require_reporter(kind)
    with pytest.raises(ReporterUnavailableError):
        run_sequential(config(setup), tmp_path / "run", progress=False, report_to=kind)
    assert not (tmp_path / "run" / "config.json").exists()  # refused before anything was written
    with pytest.raises(ValueError, match="unknown tracker"):
        require_reporter("mlflow")


def test_profile_and_device_map(setup, tmp_path):
    """--profile writes a Chrome trace of the edits; --device-map reaches from_pretrained (recorded, not
    part of the run's identity: a resumed run may place the model differently)."""
    out, trace = tmp_path / "run", tmp_path / "trace.json"
    run_sequential(config(setup, edits=1), out, progress=False, profile=trace, device_map={"": "cpu"})
    events = json.loads(trace.read_text())["traceEvents"]
    assert any(e.get("name", "").startswith("target/") for e in events)
    assert json.loads((out / "config.json").read_text())["runtime"] == {"device_map": {"": "cpu"}, "report_to": "none",
                                                                         "profile": str(trace)}
