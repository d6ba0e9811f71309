"""``fastedit stats``: its options, and what it prints."""

import argparse

import pytest

from fastedit.errors import UsageError

from fastedit.stats.command import _parse_random, add_arguments, run

from .runs import command_argv, parse_command

OPTIONS = [
    "--model", "--method", "--hparams", "--layers", "--n-samples", "--dtype", "--model-dtype", "--device",
    "--device-map", "--stats-dir", "--stats-source", "--stats-max-len", "--batch-tokens", "--rows",
    "--checkpoint-every", "--converge", "--max-vectors-factor", "--no-resume", "--check-every", "--threads",
]


def test_options():
    p = argparse.ArgumentParser()
    add_arguments(p)
    text = p.format_help()
    missing = [o for o in OPTIONS if o not in text]
    assert not missing
    a = p.parse_args(["--model", "m", "--checkpoint-every", "2e6", "--converge", "1e-3", "--max-vectors-factor", "10"])
    assert a.checkpoint_every == 2_000_000 and a.converge == 1e-3 and a.max_vectors_factor == 10.0
    assert p.parse_args(["--model", "m"]).checkpoint_every == "auto"
    assert _parse_random("random:llama:hidden_size=256,rope_theta=1e4") == ("llama", {"hidden_size": 256, "rope_theta": 1e4})


def test_prints_summary_and_curve_then_reads_the_cache(short_corpus, tmp_path, capsys):
    argv = command_argv(short_corpus, tmp_path) + ["--converge", "0.5", "--n-samples", "20"]
    assert run(parse_command(argv)) == 0
    out = capsys.readouterr().out
    assert "tokens/s" in out and "stopped at convergence (every change < 0.5)" in out
    assert "convergence (relative Frobenius change" in out and "L1" in out and "L2" in out
    assert "_float32_mom2_20.npz" in out
    # the same command again finds the caches
    assert run(parse_command(argv)) == 0
    assert "were cached already" in capsys.readouterr().out


def test_needs_layers_without_a_preset(short_corpus, tmp_path):
    argv = command_argv(short_corpus, tmp_path)
    i = argv.index("--layers")
    with pytest.raises(UsageError, match="--hparams or --layers"):
        run(parse_command(argv[:i] + argv[i + 2 :]))
