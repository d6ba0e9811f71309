"""Text sources for statistics: local files, or a Hugging Face dataset streamed through ``datasets``.

* ``*.jsonl``: one JSON object per line with a ``text`` field (the shipped Wikipedia sample,
  :data:`fastedit.bundled.WIKIPEDIA_SAMPLE`, is one);
* ``*.json``: a list of strings or of objects with ``text``;
* ``*.txt``: the whole file is one document; a folder: every ``*.txt``/``*.json``/``*.jsonl`` in it,
  sorted; any of these may be compressed (``.xz``, ``.gz``);
* ``wikipedia`` (the references' name): the current English Wikipedia dump, ``wikimedia/wikipedia``
  ``20231101.en``; ``wikitext``: ``Salesforce/wikitext`` ``wikitext-103-raw-v1``; any other
  ``owner/name`` or ``owner/name:config``: that dataset's ``train`` split. These are streamed through
  the optional ``datasets`` package (its cache and ``HF_DATASETS_OFFLINE`` apply), nothing is
  downloaded whole.

Local documents are chosen as the references choose them: indices shuffled with ``random.Random(1)``,
the first ``n`` kept. A streamed dataset has no random access: its shards and a buffer of
:data:`STREAM_BUFFER` documents are shuffled with seed 1 and the first ``n`` documents kept.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..bundled import COMPRESSED_SUFFIXES, hub_offline, plain_suffix, read_text

__all__ = ["TextSource", "open_source", "HF_DATASETS"]

# The references' dataset names and what they load now (``wikipedia`` ``20200501.en`` no longer loads).
HF_DATASETS = {"wikipedia": ("wikimedia/wikipedia", "20231101.en"), "wikitext": ("Salesforce/wikitext", "wikitext-103-raw-v1")}
STREAM_BUFFER = 10_000
_TEXT_SUFFIXES = (".txt", ".jsonl", ".json")


@dataclass
class TextSource:
    """An indexable collection of documents with a name for sidecars and logs."""

    name: str
    docs: Sequence[str]
    streamed: bool = False

    def __len__(self) -> int:
        return len(self.docs)

    def sample_indices(self, n: int | None, seed: int = 1) -> list[int]:
        """The references' sample: shuffle all indices with ``random.Random(seed)``, keep ``n``
        (a streamed source is shuffled as it streams: its first ``n``)."""
        if self.streamed:
            return list(range(len(self.docs) if n is None else n))
        idx = list(range(len(self.docs)))
        random.Random(seed).shuffle(idx)
        return idx if n is None else idx[:n]


def _read_file(path: Path) -> list[str]:
    suffix = plain_suffix(path)
    if suffix == ".jsonl":
        out = []
        for i, line in enumerate(read_text(path).splitlines()):
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
    if suffix == ".json":
        data = json.loads(read_text(path))
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of documents")
        return [d if isinstance(d, str) else d["text"] for d in data]
    return [read_text(path)]


def open_source(spec: str | Path) -> TextSource:
    """A :class:`TextSource` from a path or a dataset name (see the module docstring)."""
    path = Path(spec)
    if path.exists():
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if plain_suffix(p) in _TEXT_SUFFIXES
                           and (p.suffix in COMPRESSED_SUFFIXES or p.suffix in _TEXT_SUFFIXES))
            if not files:
                raise ValueError(f"{path}: no .txt, .json or .jsonl files")
            docs = [d for f in files for d in _read_file(f)]
        else:
            docs = _read_file(path)
        if not docs:
            raise ValueError(f"{path}: no documents")
        return TextSource(name=str(path.resolve()), docs=docs)
    return _stream_source(str(spec))


def _stream_source(spec: str) -> TextSource:
    """A dataset streamed from the Hugging Face hub (or the ``datasets`` cache), shuffled with seed 1."""
    name, _, config = spec.partition(":")
    repo, default_config = HF_DATASETS.get(name, (name, None))
    config = config or default_config
    label = f"{repo}" + (f" ({config})" if config else "")
    if Path(spec).suffix in _TEXT_SUFFIXES + COMPRESSED_SUFFIXES or spec.startswith((".", "/", "~")):
        raise FileNotFoundError(f"statistics source {spec!r}: no such file or folder")
    if "/" not in repo and name not in HF_DATASETS:
        raise FileNotFoundError(
            f"statistics source {spec!r} is neither a local file or folder nor a dataset name "
            "('wikipedia', 'wikitext' or owner/name[:config])")
    try:
        import datasets  # type: ignore
    except ImportError:
        raise FileNotFoundError(
            f"statistics source {spec!r} is not a local file, and streaming {label} needs the optional 'datasets' "
            "package (pip install datasets); without a network, pass a local .jsonl/.txt file or leave the "
            "source unset to use the Wikipedia sample that ships with fastedit"
        ) from None
    try:
        ds = datasets.load_dataset(repo, config, split="train", streaming=True)
        texts = _StreamTexts(ds.shuffle(seed=1, buffer_size=STREAM_BUFFER), _num_examples(ds))
    except Exception as e:  # offline, unknown dataset, ...
        offline = " (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set and it is not in the datasets cache)" if hub_offline() else ""
        raise FileNotFoundError(
            f"could not stream dataset {label}{offline}: {type(e).__name__}: {e}; pass a local text file instead"
        ) from e
    return TextSource(name=f"hf:{repo}/{config}" if config else f"hf:{repo}", docs=texts, streamed=True)


def _num_examples(ds) -> int | None:
    try:
        return int(ds.info.splits["train"].num_examples)
    except Exception:  # no split information in the dataset card
        return None


class _StreamTexts(Sequence[str]):
    """The ``text`` fields of a streamed dataset, read in order on demand. Read forwards (as the
    statistics collector does) each document is fetched once; an earlier index restarts the stream."""

    def __init__(self, ds, length: int | None) -> None:
        self.ds, self.length = ds, length
        self._it, self._next, self._last = None, 0, (None, None)

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("a streamed dataset without split information has no length: pass a number of samples")
        return self.length

    def __getitem__(self, i):
        if not isinstance(i, int):
            raise TypeError("a streamed dataset is indexed by single integers")
        if self._last[0] == i:
            return self._last[1]
        if self._it is None or i < self._next:
            self._it, self._next = iter(self.ds), 0
        for row in self._it:
            self._next += 1
            if self._next - 1 == i:
                self._last = (i, row["text"])
                return row["text"]
        raise IndexError(f"the streamed dataset ended after {self._next} documents, before document {i}")
