"""Bad command lines and inputs through the ``fastedit`` command: a usage error from the parser
(exit 2) or one line naming the problem (exit 2 for bad input, 1 for a failed run), never a
traceback unless --debug; the model files and everything outside the output folder untouched."""

import json

import pytest

from fastedit.cli import main
from fastedit.models import random_model

from .conftest import GOOD, HP, tree

NUMBERS = [
    ["edit", "--batch-size", "-1"], ["edit", "--batch-size", "0"], ["edit", "--batch-size", "x"],
    ["run", "--eval-every", "0"], ["run", "--eval-every", "-1"], ["run", "--batch-size", "-1"], ["run", "--edits", "0"],
    ["run", "--start", "-3"], ["run", "--downstream-n", "-1"], ["run", "--disable-factor", "nan"],
    ["run", "--entropy-collapse", "-1"], ["run", "--time-limit", "0"], ["run", "--threads", "0"],
    ["stats", "--rows", "0"], ["stats", "--converge", "nan"], ["stats", "--converge", "-1"],
    ["stats", "--max-vectors-factor", "inf"], ["stats", "--checkpoint-every", "-5"], ["stats", "--checkpoint-every", "inf"],
    ["stats", "--check-every", "1.5"], ["stats", "--layers", "a,b"], ["stats", "--layers", "-1"],
    ["stats", "--n-samples", "0"], ["stats", "--batch-tokens", "-8"], ["stats", "--max-tokens", "0"],
    ["stats", "--stats-max-len", "0"], ["nonsense"], ["edit"],
]
REQUIRED = {"edit": ["--model", "m", "--requests", "r.json", "--out", "o"], "run": ["--edits", "2", "--out", "o"],
            "stats": ["--model", "m"]}


@pytest.mark.parametrize("argv", NUMBERS, ids=[" ".join(a) for a in NUMBERS])
def test_parser_refuses_bad_numbers(argv, capsys):
    full = argv + [a for a in REQUIRED.get(argv[0], []) if a not in argv] if len(argv) > 1 else argv
    with pytest.raises(SystemExit) as e:
        main(full)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    if len(argv) > 2:
        assert argv[1] in err  # the option is named


@pytest.fixture(scope="module")
def saved(tmp_path_factory, gpt2_tok, healthy_stats):
    root = tmp_path_factory.mktemp("cli")
    random_model("gpt2").save_pretrained(root / "tiny")
    gpt2_tok.save_pretrained(root / "tiny")
    (root / "hp.json").write_text(json.dumps(HP))
    return root


def _edit(saved, tmp_path, healthy_stats, requests=None, hparams=None, raw=None):
    req = tmp_path / "req.json"
    req.write_text(raw if raw is not None else json.dumps(requests if requests is not None else [GOOD]))
    hp = tmp_path / "hp.json"
    hp.write_text(json.dumps(hparams if hparams is not None else HP))
    return ["edit", "--model", str(saved / "tiny"), "--requests", str(req), "--hparams", str(hp),
            "--stats-dir", str(healthy_stats[0]), "--device", "cpu", "--out", str(tmp_path / "out")]


BAD_INPUTS = {
    "request-target-empty": dict(requests=[{**GOOD, "target_new": ""}]),
    "request-not-object": dict(requests=[5]),
    "request-braces": dict(requests=[{**GOOD, "prompt": "{} {x}"}]),
    "request-same-target": dict(requests=[{**GOOD, "target_new": "basketball"}]),
    "requests-not-json": dict(raw="[{"),
    "hparams-layers-string": dict(hparams={**HP, "layers": "12"}),
    "hparams-nan-clamp": dict(hparams={**HP, "clamp_norm_factor": float("nan")}),
    "hparams-negative-lr": dict(hparams={**HP, "v_lr": -0.5}),
    "hparams-dataset-escape": dict(hparams={**HP, "mom2_dataset": "../../../x"}),
    "hparams-layer-outside": dict(hparams={**HP, "layers": [1, 9]}),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(saved, tmp_path, healthy_stats, capsys, name):
    argv = _edit(saved, tmp_path, healthy_stats, **BAD_INPUTS[name])
    model_files, stats_files = tree(saved / "tiny"), tree(healthy_stats[0])
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("fastedit edit:")]
    assert len(lines) == 1 and lines[0].startswith("fastedit edit: error:") and "Traceback" not in err, err
    assert tree(saved / "tiny") == model_files and tree(healthy_stats[0]) == stats_files
    assert not (tmp_path / "out" / "result.json").exists()


def test_missing_file_is_exit_2(saved, tmp_path, healthy_stats, capsys):
    argv = _edit(saved, tmp_path, healthy_stats)
    argv[argv.index("--requests") + 1] = str(tmp_path / "nowhere.json")
    assert main(argv) == 2
    assert "nowhere.json" in capsys.readouterr().err


def test_failed_run_is_exit_1_and_debug_raises(saved, tmp_path, healthy_stats, capsys, monkeypatch):
    """A run that fails with good inputs (here: a solve that fails its residual check) exits 1 with
    one line and writes no results; --debug lets the error through with its traceback."""
    from fastedit.engine import EditFailedError
    from fastedit.methods import memit, templates

    # fixed context texts: sampling them from the random model is slow and beside the point here
    monkeypatch.setattr(templates, "sample_texts", lambda model, tok, prompt, n, *a, **k: [f"{prompt} was cold"] * n)
    real = memit.WoodburySolver.__call__
    monkeypatch.setattr(memit.WoodburySolver, "__call__", lambda self, l, k: real(self, l, k) * 2)
    argv = _edit(saved, tmp_path, healthy_stats)
    argv[argv.index("--stats-dir") + 1] = str(tmp_path / "stats")
    argv += ["--stats-source", str(healthy_stats[1])]
    assert main(argv) == 1
    err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("fastedit edit:")]
    assert len(err) == 1 and "backward error" in err[0] and "--debug" in err[0], err
    assert not (tmp_path / "out" / "result.json").exists()
    with pytest.raises(EditFailedError):
        main(["--debug"] + argv)


def test_usage_error_is_exit_2_one_line(capsys):
    assert main(["stats", "--model", "random:gpt2", "--device-map", "auto", "--stats-dir", "/nonexistent"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device-map" in err[0]


def test_damaged_run_log_is_named(tmp_path, capsys):
    """A run directory whose log is damaged before its last line cannot be resumed: one line that
    names the file and the line (a torn last line alone is repaired: tests/experiments)."""
    from fastedit.experiments.sequential import _truncate_jsonl

    log = tmp_path / "edits.jsonl"
    log.write_text('{"edit": 1}\n{"edit": 2\n{"edit": 3}\n')
    with pytest.raises(ValueError, match="edits.jsonl:2"):
        _truncate_jsonl(log, lambda r: True)
    log.write_text('{"edit": 1}\n{"edit": 2}\n{"edit": 3, "ca')
    assert _truncate_jsonl(log, lambda r: True) == [{"edit": 1}, {"edit": 2}]
    assert log.read_text() == '{"edit": 1}\n{"edit": 2}\n'
