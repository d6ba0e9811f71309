"""Evaluation datasets: CounterFact, zsRE and the GLUE subsets, from local JSON files or the hub.

Every loader takes a local path (a file, plain or compressed ``.xz``/``.gz``, or a folder holding the
usual file name). Where none is given:

* :func:`load_counterfact` reads the 10,000 CounterFact records that ship with fastedit
  (:data:`fastedit.bundled.COUNTERFACT_SAMPLE`), or ``counterfact/counterfact-edit.json`` under
  ``$FASTEDIT_DATA_DIR`` when that is set; ``"hub"`` reads all 21,919 records of the original
  CounterFact from the Hugging Face dataset :data:`COUNTERFACT_HUB` through ``datasets``;
* :func:`load_glue` reads the shipped label-balanced subsets (``glue/{task}.json.xz``), or
  ``glue/{task}.json`` under ``$FASTEDIT_DATA_DIR``; ``"hub"`` reads the whole validation split of
  :data:`GLUE_HUB` through ``datasets``;
* :func:`load_zsre` downloads the canonical file the reference code uses (kmeng01's
  ``zsre_mend_eval.json``) once into ``cache_dir()/data`` (``$FASTEDIT_CACHE``); nothing of zsRE ships.

Any loader also takes ``"hf:owner/name"`` (a dataset, every split in order, through ``datasets``) or
``"hf:owner/name/path/file.json"`` (one file of a dataset repository, through ``huggingface_hub``).
Both keep their downloads in their own caches and honour ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``;
with a switch set, the zsRE download is not attempted either. ``datasets`` is an optional dependency
(``pip install fastedit[hub]``).

CounterFact comes in two layouts, both read here:

* the original one (kmeng01): ``requested_rewrite`` with ``{}`` in the prompt, ``paraphrase_prompts``
  (2), ``neighborhood_prompts`` (10 prompts about *other* subjects whose correct answer is the old
  object ``target_true``), ``attribute_prompts`` and ``generation_prompts``;
* the simplified "EasyEdit" one: ``prompt`` with the subject written out, ``target_new``,
  ``ground_truth``, ``rephrase_prompt``, ``locality_prompt`` and its own ``locality_ground_truth``.

Both become :class:`~fastedit.requests.EditRequest` objects with ``neighborhood_answer`` set: the
locality answer where the layout has one, else ``target_true`` (what the original neighbourhood
prompts are scored against). ``attribute_prompts`` and ``generation_prompts`` stay in
``request.extra`` (the raw record); :func:`attribute_prompts` and :func:`generation_prompts` read them.

zsRE (the MEND/ROME layout ``{subject, src, pred, rephrase, alt, answers, loc, loc_ans, cond}``)
becomes requests the way kmeng01's ``dsets/zsre.py`` (ROME and MEMIT alike) builds them: the prompt is
``src`` with the subject replaced by ``{}``, the new target ``answers[0]`` (``target="answers0"``;
``target="alt"`` gives MEND's/EasyEdit's counterfactual target ``alt`` with ``answers[0]`` as the
true one), the paraphrase ``rephrase``, the neighbourhood prompt ``loc + "?"`` with the answer
``loc_ans``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import lzma
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..bundled import PACKAGE_DATA, hub_offline, read_text, with_compressed
from ..requests import EditRequest, RequestError

log = logging.getLogger(__name__)

__all__ = [
    "DatasetError",
    "GlueExample",
    "GLUE_TASKS",
    "COUNTERFACT_HUB",
    "GLUE_HUB",
    "ZSRE_URL",
    "default_data_dir",
    "load_counterfact",
    "load_zsre",
    "load_glue",
    "attribute_prompts",
    "generation_prompts",
]

# The original CounterFact (kmeng01's counterfact.json: splits train and test, in case_id order here).
COUNTERFACT_HUB = "azhx/counterfact"
GLUE_HUB = "nyu-mll/glue"
ZSRE_URL = "https://rome.baulab.info/data/dsets/zsre_mend_eval.json"
HUB = "hub"

GLUE_TASKS = ("sst2", "mrpc", "cola", "rte")
# The fields of each GLUE subset's records, besides ``label`` and ``idx``.
_GLUE_FIELDS = {"sst2": ("sentence",), "cola": ("sentence",), "mrpc": ("sentence1", "sentence2"), "rte": ("sentence1", "sentence2")}

# Fields that hold evaluation prompts, in either CounterFact layout: a string or a list of strings.
_PROMPT_FIELDS = (
    "paraphrase_prompts",
    "neighborhood_prompts",
    "attribute_prompts",
    "generation_prompts",
    "rephrase_prompt",
    "locality_prompt",
)


class DatasetError(ValueError):
    """A dataset file that is missing or malformed; the message names the file, record and field."""


# ---------------------------------------------------------------------------------- locations
def default_data_dir() -> Path:
    """The folder the loaders read by default: ``$FASTEDIT_DATA_DIR`` if set (laid out as
    ``counterfact/counterfact-edit.json``, ``glue/{task}.json``, ...), else the data that ships
    inside the package."""
    env = os.environ.get("FASTEDIT_DATA_DIR")
    return Path(env) if env else PACKAGE_DATA


def _download(url: str, dest: Path, timeout: float = 30.0) -> None:
    """Fetch ``url`` into ``dest`` through a temporary file, so an interrupted download never
    leaves a truncated file where the next run would read it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _canonical_file(name: str, url: str) -> Path:
    """``cache_dir()/data/name``, downloaded from ``url`` the first time (not with the offline switches)."""
    from ..models.loading import cache_dir

    dest = cache_dir() / "data" / name
    if dest.exists():
        return dest
    if hub_offline():
        raise DatasetError(
            f"{name} is not in {dest.parent} and HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set: pass a local file "
            f"(--data FILE), or download {url} into {dest.parent} once")
    log.info("downloading %s into %s (once)", url, dest)
    try:
        _download(url, dest)
    except OSError as err:  # URLError, timeouts and refused connections are all OSErrors
        raise DatasetError(
            f"{name} is not in {dest.parent} and could not be downloaded from {url} ({err}); "
            "offline, pass a local file instead (--data FILE)"
        ) from err
    return dest


def _import_datasets(what: str):
    try:
        import datasets  # type: ignore
    except ImportError:
        raise DatasetError(
            f"{what} comes through the optional 'datasets' package, which is not installed "
            "(pip install datasets); or pass a local file") from None
    return datasets


def _hub_failure(what: str, err: Exception) -> DatasetError:
    offline = " (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set and it is not cached)" if hub_offline() else ""
    return DatasetError(f"could not load {what}{offline}: {type(err).__name__}: {err}; pass a local file instead")


def _hub_records(spec: str) -> tuple[list, Path]:
    """Records of ``hf:owner/name`` (a dataset, every split in order) or ``hf:owner/name/file.json``
    (one JSON file of a dataset repository), and a path that names them in messages."""
    target = spec.removeprefix("hf:")
    parts = target.split("/")
    if len(parts) < 2 or not all(parts):
        raise DatasetError(f"{spec!r}: expected hf:owner/name or hf:owner/name/path/to/file.json")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    if filename:
        try:
            from huggingface_hub import hf_hub_download

            local = Path(hf_hub_download(repo, filename, repo_type="dataset"))
        except Exception as err:  # offline, missing file, no such repository
            raise _hub_failure(f"{filename} from the dataset repository {repo}", err) from err
        return _read_json_list(local), local
    datasets = _import_datasets(f"the dataset {repo}")
    try:
        splits = datasets.load_dataset(repo)
    except Exception as err:
        raise _hub_failure(f"the dataset {repo}", err) from err
    records = [dict(row) for split in splits.values() for row in split]
    return records, Path(f"hf:{repo}")


def _resolve_file(path: str | Path, names: Sequence[str], what: str) -> Path:
    """``path`` itself, or the first of ``names`` (plain or compressed) in the folder ``path``."""
    path = Path(path)
    if path.is_dir():
        for name in with_compressed(names):
            if (path / name).is_file():
                return path / name
        raise DatasetError(f"{what}: no {' or '.join(names)} (plain, .xz or .gz) in folder {path}")
    if not path.is_file():
        raise DatasetError(f"{what}: file {path} not found")
    return path


def _read_json_list(path: Path) -> list:
    try:
        data = json.loads(read_text(path))
    except (ValueError, EOFError, OSError, lzma.LZMAError) as err:  # JSON, UTF-8 or decompression errors
        raise DatasetError(f"{path}: not valid JSON ({type(err).__name__}: {err})") from err
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _records(path: str | Path | None, names: Sequence[str], what: str, hub: str | None) -> tuple[list, Path]:
    """The records a loader reads: from ``path``, the default data folder (``None``) or the hub."""
    if isinstance(path, str) and (path == HUB or path.startswith("hf:")):
        if path == HUB and hub is None:
            raise DatasetError(f"{what}: no hub dataset is known; pass a local file or hf:owner/name[/file.json]")
        records, where = _hub_records(path if path != HUB else f"hf:{hub}")
        return records, where
    file = _resolve_file(default_data_dir() if path is None else path, names, what)
    return _read_json_list(file), file


def _window(records: list, n: int | None, start: int, path: Path) -> list[tuple[int, Any]]:
    if not isinstance(start, int) or start < 0:
        raise DatasetError(f"{path}: start must be a non-negative integer, got {start!r}")
    if n is not None and (not isinstance(n, int) or n < 0):
        raise DatasetError(f"{path}: n must be a non-negative integer or None, got {n!r}")
    stop = len(records) if n is None else min(len(records), start + n)
    return [(i, records[i]) for i in range(start, stop)]


def _where(path: Path, index: int, record: Any, id_key: str = "case_id") -> str:
    cid = record.get(id_key) if isinstance(record, Mapping) else None
    if cid is None and isinstance(record, Mapping) and isinstance(record.get("requested_rewrite"), Mapping):
        cid = record["requested_rewrite"].get(id_key)
    return f"{path.name}: record #{index}" + (f" ({id_key} {cid!r})" if cid is not None else "")


# ---------------------------------------------------------------------------------- CounterFact
def load_counterfact(path: str | Path | None = None, n: int | None = None, start: int = 0) -> list[EditRequest]:
    """CounterFact records ``start .. start + n`` as edit requests, from either layout.

    ``path``: a JSON file (or a folder holding ``counterfact.json`` or
    ``counterfact/counterfact-edit.json``); ``None``: the 10,000 records that ship with fastedit (or
    ``$FASTEDIT_DATA_DIR``'s); ``"hub"``: the whole original CounterFact through ``datasets``; or an
    ``hf:`` reference (see the module docstring). Every evaluation prompt is kept.
    """
    records, file = _records(
        path,
        ("counterfact.json", "counterfact-edit.json", "counterfact/counterfact.json", "counterfact/counterfact-edit.json"),
        "CounterFact",
        COUNTERFACT_HUB,
    )
    if isinstance(path, str) and (path == HUB or path.startswith("hf:")):
        # a hub dataset comes split (train, test): the original file's order is case_id order
        records.sort(key=lambda r: (r.get("case_id") is None, r.get("case_id") or 0) if isinstance(r, Mapping) else (True, 0))
    return [_counterfact_request(rec, i, file) for i, rec in _window(records, n, start, file)]


def _counterfact_request(record: Any, index: int, path: Path) -> EditRequest:
    where = _where(path, index, record)
    if not isinstance(record, Mapping):
        raise DatasetError(f"{where}: expected a JSON object, got {type(record).__name__}")
    rewrite = record.get("requested_rewrite", record)
    if not isinstance(rewrite, Mapping):
        raise DatasetError(f"{where}: field 'requested_rewrite' must be an object, got {type(rewrite).__name__}")
    if "target_true" not in rewrite and "ground_truth" not in record:
        raise DatasetError(f"{where}: missing field 'target_true' ('ground_truth' in the simplified layout)")
    for key in _PROMPT_FIELDS:
        if key in record:
            _check_prompts(record[key], f"{where}: field {key!r}")
    try:
        request = EditRequest.from_dict(record, index=index)
    except RequestError as err:
        raise DatasetError(f"{where}: {err}") from err
    if request.neighborhood_answer is None:
        # Original layout: the neighbourhood prompts' correct answer is the old object.
        request = dataclasses.replace(request, neighborhood_answer=request.target_true)
    return request


def _check_prompts(value: Any, where: str) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, (list, tuple)):
        raise DatasetError(f"{where} must be a string or a list of strings, got {type(value).__name__}")
    for j, item in enumerate(value):
        if not isinstance(item, str):
            raise DatasetError(f"{where}[{j}] must be a string, got {type(item).__name__}")


def attribute_prompts(request: EditRequest) -> tuple[str, ...]:
    """The original CounterFact record's ``attribute_prompts`` (prompts about other subjects whose
    answer is ``target_new``); empty for layouts without them."""
    return tuple(request.extra.get("attribute_prompts", ()))


def generation_prompts(request: EditRequest) -> tuple[str, ...]:
    """The original CounterFact record's ``generation_prompts`` (for fluency and consistency);
    empty for layouts without them."""
    return tuple(request.extra.get("generation_prompts", ()))


# ---------------------------------------------------------------------------------- zsRE
def load_zsre(
    path: str | Path | None = None, n: int | None = None, start: int = 0, target: str = "answers0"
) -> list[EditRequest]:
    """zsRE records ``start .. start + n`` (MEND/ROME layout) as edit requests.

    ``target="answers0"`` (kmeng01's ROME and MEMIT): write ``answers[0]``, no ``target_true``.
    ``target="alt"`` (MEND, EasyEdit): write ``alt``, with ``answers[0]`` as ``target_true``.
    ``path``: a file or folder, an ``hf:`` reference, or ``None`` for kmeng01's file, downloaded once.
    ``case_id`` is the record's index in the file, as in the reference. The subject must occur in
    ``src``; its first occurrence becomes ``{}`` (the reference replaces every occurrence, which
    gives the same prompt text).
    """
    if target not in ("answers0", "alt"):
        raise DatasetError(f"zsRE: target must be 'answers0' or 'alt', got {target!r}")
    if path is None:
        file = _canonical_file("zsre_mend_eval.json", ZSRE_URL)
        records = _read_json_list(file)
    else:
        records, file = _records(
            path,
            ("zsre_mend_eval.json", "zsre_mend_train-1k.json", "zsre/zsre_mend_eval.json", "zsre/zsre_mend_train-1k.json"),
            "zsRE",
            None,
        )
    return [_zsre_request(rec, i, file, target) for i, rec in _window(records, n, start, file)]


def _zsre_request(record: Any, index: int, path: Path, target: str) -> EditRequest:
    where = f"{path.name}: record #{index}"
    if not isinstance(record, Mapping):
        raise DatasetError(f"{where}: expected a JSON object, got {type(record).__name__}")

    def text(key: str) -> str:
        if key not in record:
            raise DatasetError(f"{where}: missing field {key!r}")
        value = record[key]
        if not isinstance(value, str) or not value.strip():
            raise DatasetError(f"{where}: field {key!r} must be a non-empty string, got {value!r}")
        return value

    subject, src = text("subject"), text("src")
    answers = record.get("answers")
    if not isinstance(answers, list) or not answers or not isinstance(answers[0], str) or not answers[0].strip():
        raise DatasetError(f"{where}: field 'answers' must be a non-empty list of strings, got {answers!r}")
    pos = src.find(subject)
    if pos < 0:
        raise DatasetError(f"{where}: field 'src' {src!r} does not contain the subject {subject!r}")
    if "{" in src or "}" in src:
        raise DatasetError(f"{where}: field 'src' {src!r} contains a brace, which the prompt template cannot hold")
    prompt = src[:pos] + "{}" + src[pos + len(subject) :]
    target_new, target_true = (answers[0], None) if target == "answers0" else (text("alt"), answers[0])
    try:
        return EditRequest(
            prompt=prompt,
            subject=subject,
            target_new=target_new,
            target_true=target_true,
            case_id=index,
            paraphrase_prompts=(text("rephrase"),),
            neighborhood_prompts=(text("loc") + "?",),
            neighborhood_answer=text("loc_ans"),
            extra=dict(record),
        )
    except RequestError as err:
        raise DatasetError(f"{where}: {err}") from err


# ---------------------------------------------------------------------------------- GLUE
@dataclass(frozen=True)
class GlueExample:
    """One GLUE example. ``sentence`` is ``sentence`` (SST-2, CoLA) or ``sentence1`` (MRPC, RTE);
    ``sentence2`` is ``None`` for the single-sentence tasks. ``label`` is GLUE's: SST-2 1 positive,
    MRPC 1 paraphrase, CoLA 1 acceptable, RTE 0 entailment and 1 not entailment."""

    task: str
    idx: int
    label: int
    sentence: str
    sentence2: str | None = None


def load_glue(task: str, path_or_dir: str | Path | None = None) -> list[GlueExample]:
    """The GLUE subset of ``task`` (sst2, mrpc, cola, rte) from a JSON file, or from
    ``{dir}/{task}.json`` or ``{dir}/glue/{task}.json`` (plain or compressed); ``None`` uses
    :func:`default_data_dir` (the shipped subsets); ``"hub"`` the task's whole validation split."""
    if task not in GLUE_TASKS:
        raise DatasetError(f"unknown GLUE task {task!r}; choose from {GLUE_TASKS}")
    if path_or_dir == HUB:
        datasets = _import_datasets(f"GLUE {task}")
        try:
            records = [dict(row) for row in datasets.load_dataset(GLUE_HUB, task, split="validation")]
        except Exception as err:
            raise _hub_failure(f"GLUE {task} ({GLUE_HUB})", err) from err
        file = Path(f"hf:{GLUE_HUB}/{task}")
    else:
        records, file = _records(path_or_dir, (f"{task}.json", f"glue/{task}.json"), f"GLUE {task}", None)
    return [_glue_example(rec, i, file, task) for i, rec in enumerate(records)]


def _glue_example(record: Any, index: int, path: Path, task: str) -> GlueExample:
    where = _where(path, index, record, "idx")
    if not isinstance(record, Mapping):
        raise DatasetError(f"{where}: expected a JSON object, got {type(record).__name__}")
    texts = []
    for key in _GLUE_FIELDS[task]:
        if key not in record:
            raise DatasetError(f"{where}: missing field {key!r} (a {task} record has {_GLUE_FIELDS[task]}, label, idx)")
        value = record[key]
        if not isinstance(value, str) or not value.strip():
            raise DatasetError(f"{where}: field {key!r} must be a non-empty string, got {value!r}")
        texts.append(value)
    label = record.get("label")
    if isinstance(label, bool) or label not in (0, 1):
        raise DatasetError(f"{where}: field 'label' must be 0 or 1, got {label!r}")
    idx = record.get("idx", index)
    if isinstance(idx, bool) or not isinstance(idx, int):
        raise DatasetError(f"{where}: field 'idx' must be an integer, got {idx!r}")
    return GlueExample(task, idx, int(label), texts[0], texts[1] if len(texts) > 1 else None)
