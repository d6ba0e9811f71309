"""The command runs that the resume and distributed tests compare."""

import argparse

# big enough that a pass takes a second or two on one thread, small enough to build instantly
MODEL = "random:llama:hidden_size=256,intermediate_size=1024,num_attention_heads=4"
N_SAMPLES = 36
CACHE = "random-llama/wikipedia_stats/model.layers.{}.mlp.down_proj_float32_mom2_%d.npz" % N_SAMPLES


def command_argv(corpus, stats_dir) -> list[str]:
    """``fastedit stats`` options shared by the resume and distributed tests: rows of 128 tokens, two per
    pass, a check and a checkpoint every 512 tokens."""
    return [
        "--model", MODEL, "--layers", "1,2", "--n-samples", str(N_SAMPLES), "--stats-max-len", "128", "--rows", "2",
        "--check-every", "512", "--checkpoint-every", "512", "--threads", "1", "--no-progress",
        "--stats-source", str(corpus), "--stats-dir", str(stats_dir),
    ]


def parse_command(argv):
    from fastedit.stats.command import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(argv)
