import pytest

from textdata import write_stats_corpus


@pytest.fixture()
def corpus(tmp_path):
    """A small text corpus with enough key vectors for full-rank statistics of the tiny models."""
    return write_stats_corpus(tmp_path / "t.jsonl")
