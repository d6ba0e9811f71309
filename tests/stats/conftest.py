"""Shared setup of the statistics tests.

They run tiny models: one thread each (on a shared 2-core machine two threads spend most of their time
waiting for each other), restored afterwards. The resume and distributed tests compare real command
runs (subprocesses, torchrun) with one uninterrupted in-process run of the same command.
"""

import json

import pytest
import torch

from .runs import command_argv, parse_command

@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def short_corpus(shared_data, tmp_path_factory):
    """The Wikipedia sample cut to 1,500 characters an article: the documents are truncated to 128
    tokens anyway, and GPT-2's (pure Python) tokenizer then has little to do."""
    lines = (shared_data / "wikipedia" / "enwiki_sample.jsonl").read_text().splitlines()
    path = tmp_path_factory.mktemp("corpus") / "wiki_short.jsonl"
    path.write_text("\n".join(json.dumps({"text": json.loads(line)["text"][:1500]}) for line in lines) + "\n")
    return path


@pytest.fixture(scope="session")
def uninterrupted_run(short_corpus, tmp_path_factory):
    """The stats dir of one uninterrupted in-process run of :func:`command_argv`."""
    from fastedit.stats.command import run

    out = tmp_path_factory.mktemp("whole")
    before = torch.get_num_threads()
    try:
        assert run(parse_command(command_argv(short_corpus, out))) == 0
    finally:
        torch.set_num_threads(before)
    return out
