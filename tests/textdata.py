"""Small text sources for tests that compute statistics."""

from pathlib import Path


def write_stats_corpus(path: Path, docs: int = 6, words: int = 120) -> Path:
    """A .jsonl text source of ``docs`` different documents (seeded word salad), enough key vectors
    for a full-rank second moment of the tiny random models (width 176, 128 positions)."""
    import json
    import random

    rng = random.Random(0)
    vocab = ("the cat sat on a mat and dog log river city house music played team won lost "
             "king queen born in capital of language spoke French English ball sport game").split()
    lines = [json.dumps({"text": " ".join(rng.choice(vocab) for _ in range(words)) + "."}) for _ in range(docs)]
    path.write_text("\n".join(lines) + "\n")
    return path
