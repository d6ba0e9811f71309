import pytest


@pytest.fixture()
def corpus(tmp_path):
    """A tiny text to compute the statistics from."""
    src = tmp_path / "t.txt"
    src.write_text("The cat sat on the mat and the dog sat on the log. " * 20)
    return src
