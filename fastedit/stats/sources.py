"""Text sources for statistics: local files, or a Hugging Face dataset where one is reachable.

* ``*.jsonl``: one JSON object per line with a ``text`` field (``../shared/data/wikipedia/enwiki_sample.jsonl``);
* ``*.json``: a list of strings or of objects with ``text``;
* ``*.txt``: the whole file is one document; a folder: every ``*.txt``/``*.jsonl`` in it, sorted;
* ``wikipedia`` / ``wikitext`` (the references' names) or any other dataset name: ``datasets.load_dataset``
  with the references' configuration (``20200501.en``, ``wikitext-103-raw-v1``).

Documents are chosen as the references choose them: indices shuffled with ``random.Random(1)``, the
first ``n`` kept.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

__all__ = ["TextSource", "open_source"]

HF_CONFIGS = {"wikipedia": "20200501.en", "wikitext": "wikitext-103-raw-v1"}


@dataclass
class TextSource:
    """An indexable collection of documents with a name for sidecars and logs."""

    name: str
    docs: Sequence[str]

    def __len__(self) -> int:
        return len(self.docs)

    def sample_indices(self, n: int | None, seed: int = 1) -> list[int]:
        """The references' sample: shuffle all indices with ``random.Random(seed)``, keep ``n``."""
        idx = list(range(len(self.docs)))
        random.Random(seed).shuffle(idx)
        return idx if n is None else idx[:n]


def _read_file(path: Path) -> list[str]:
    if path.suffix == ".jsonl":
        out = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i + 1}: not valid JSON ({e})") from e
            if isinstance(rec, str):
                out.append(rec)
            elif isinstance(rec, dict) and isinstance(rec.get("text"), str):
                out.append(rec["text"])
            else:
                raise ValueError(f"{path}:{i + 1}: expected a string or an object with a 'text' string")
        return out
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of documents")
        return [d if isinstance(d, str) else d["text"] for d in data]
    return [path.read_text(encoding="utf-8")]


def open_source(spec: str | Path) -> TextSource:
    """A :class:`TextSource` from a path or a dataset name (see the module docstring)."""
    path = Path(spec)
    if path.exists():
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".txt", ".jsonl", ".json"))
            if not files:
                raise ValueError(f"{path}: no .txt, .json or .jsonl files")
            docs = [d for f in files for d in _read_file(f)]
        else:
            docs = _read_file(path)
        if not docs:
            raise ValueError(f"{path}: no documents")
        return TextSource(name=str(path.resolve()), docs=docs)
    name = str(spec)
    try:
        import datasets  # type: ignore
    except ImportError:
        raise FileNotFoundError(
            f"statistics source {name!r} is neither a local file nor loadable: the 'datasets' package is not "
            "installed (pass a local .jsonl/.txt file, e.g. ../shared/data/wikipedia/enwiki_sample.jsonl)"
        ) from None
    try:
        ds = datasets.load_dataset(name, HF_CONFIGS.get(name))["train"]
    except Exception as e:  # offline, unknown dataset, ...
        raise FileNotFoundError(f"could not load dataset {name!r} ({e}); pass a local text file instead") from e
    return TextSource(name=f"hf:{name}/{HF_CONFIGS.get(name)}", docs=_HFTexts(ds))


class _HFTexts(Sequence[str]):
    def __init__(self, ds) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[i]["text"]
