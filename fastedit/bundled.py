"""Data that ships inside the package, so the default jobs need no network and no other folder.

``fastedit/data/`` holds (licences and attribution in ``fastedit/data/LICENSES.md``):

* ``wikipedia/enwiki_sample.jsonl.xz``: 105 English Wikipedia articles (``{id, title, text}`` a line),
  the default text for second-moment statistics in ``fastedit demo`` and ``fastedit run``;
* ``glue/{sst2,mrpc,cola,rte}.json.xz``: label-balanced GLUE validation subsets, 200 examples each,
  the downstream probes of ``fastedit run``;
* ``counterfact/counterfact-edit.json.xz``: 10,000 CounterFact records (simplified layout), the
  default requests of ``fastedit run``;
* ``demo_requests.json``: the demo's eight hand-written requests.

:func:`read_text` reads these and any user file alike, plain or compressed (``.xz``, ``.gz``).
"""

from __future__ import annotations

import gzip
import lzma
import os
from pathlib import Path

__all__ = [
    "PACKAGE_DATA",
    "WIKIPEDIA_SAMPLE",
    "COUNTERFACT_SAMPLE",
    "GLUE_DIR",
    "COMPRESSED_SUFFIXES",
    "read_text",
    "plain_suffix",
    "with_compressed",
    "hub_offline",
]

PACKAGE_DATA = Path(__file__).resolve().parent / "data"
WIKIPEDIA_SAMPLE = PACKAGE_DATA / "wikipedia" / "enwiki_sample.jsonl.xz"
COUNTERFACT_SAMPLE = PACKAGE_DATA / "counterfact" / "counterfact-edit.json.xz"
GLUE_DIR = PACKAGE_DATA / "glue"
COMPRESSED_SUFFIXES = (".xz", ".gz")


def read_text(path: str | Path) -> str:
    """The UTF-8 text of ``path``, decompressed when its name ends in ``.xz`` or ``.gz``."""
    path = Path(path)
    if path.suffix == ".xz":
        with lzma.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    return path.read_text(encoding="utf-8")


def plain_suffix(path: str | Path) -> str:
    """The suffix that says the format, under any compression suffix: ``.jsonl`` for ``a.jsonl.xz``."""
    path = Path(path)
    return Path(path.stem).suffix if path.suffix in COMPRESSED_SUFFIXES else path.suffix


def with_compressed(names) -> list[str]:
    """Each file name followed by its compressed variants (``x.json``, ``x.json.xz``, ``x.json.gz``)."""
    return [n + s for n in names for s in ("",) + COMPRESSED_SUFFIXES]


def hub_offline() -> bool:
    """Whether the Hugging Face offline switches are on (``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE``)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
