"""EasyEdit's editor on fastedit: scripts written for zjunlp/EasyEdit switch by changing an import.

::

    # from easyeditor import BaseEditor, ROMEHyperParams, MEMITHyperParams
    from fastedit.easyedit import BaseEditor, ROMEHyperParams, MEMITHyperParams

    hparams = ROMEHyperParams.from_hparams("hparams/ROME/gpt2-xl")          # EasyEdit's YAML file
    editor = BaseEditor.from_hparams(hparams)
    metrics, edited_model, weights_copy = editor.edit(
        prompts=["Ray Charles, the"], target_new=["violin"], subject=["Ray Charles"],
        ground_truth=["piano"], rephrase_prompts=[...], locality_inputs={...},
        portability_inputs={...}, sequential_edit=False,
    )

The metrics come in EasyEdit's layout, one dict per request: ``case_id``, ``requested_rewrite``,
``time`` and ``pre`` / ``post`` with ``rewrite_acc``, ``rephrase_acc``, ``locality``
(``{key}_output`` token lists, and in ``post`` their agreement with ``pre`` as ``{key}_acc``),
``portability`` (``{key}_acc``) and ``metric_meta``. Accuracies are EasyEdit's teacher-forced token
accuracy: ``prompt + " " + target`` is run once (left-padded batch) and the argmax at each target
position is compared with the target token.

The edits themselves are fastedit's (exact mode by default), made with the same algorithms as
EasyEdit's ROME and MEMIT: the target gets EasyEdit's leading space (ROME always adds one, MEMIT only
when missing), and ROME's context templates are sampled from MEMIT's start words, as EasyEdit does.
What EasyEdit's hparams files say about the run is honoured: ``model_name`` (loaded with
:func:`fastedit.load_model`; or pass ``model=`` and ``tok=``), ``device``, ``fp16``, ``model_parallel``
(``device_map="auto"``), ``stats_dir``, ``max_length`` and, in :meth:`BaseEditor.batch_edit`,
``batch_size``.

Without ``sequential_edit`` (or with ``keep_original_weight=True``) every edit is undone after its
evaluation, so each request edits the unedited model; with it, the edits accumulate.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .engine import EditSession
from .hparams import HyperParams, MEMITHyperParams, ROMEHyperParams, RROMEHyperParams
from .methods.registry import easyedit_names, get_method
from .methods.templates import start_word_templates
from .requests import EditRequest

__all__ = ["BaseEditor", "ROMEHyperParams", "RROMEHyperParams", "MEMITHyperParams", "token_accuracy"]

log = logging.getLogger(__name__)

_TEACHER_FORCING_META = {
    "protocol": "decoder_only_teacher_forcing",
    "scorer": "token_accuracy",
    "comparable_group": "lm.decoder_only_teacher_forcing.token_accuracy",
}


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def _teacher_forced(model, tok, prompts: Sequence[str], targets: Sequence[str], max_length: int):
    """For each prompt: (argmax predictions at the target positions, target token ids), from one
    left-padded forward pass of ``prompt + " " + target``, as EasyEdit's evaluation runs it."""
    texts = [p + " " + t for p, t in zip(prompts, targets)]
    longest = max(len(tok.encode(t)) for t in texts) + 1
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        kw = dict(padding=True, truncation=True, max_length=max(max_length, longest))
        full = tok(texts, return_tensors="pt", **kw)
        prompt_ids = tok(list(prompts), **kw)["input_ids"]
    finally:
        tok.padding_side = side
    pad = tok.pad_token_id
    # the target starts after the padding and the prompt's own tokens
    starts = [
        int((row == pad).sum()) + sum(1 for t in p_row if t != pad)
        for row, p_row in zip(full["input_ids"], prompt_ids)
    ]
    device = next(model.parameters()).device
    out = model(**{k: v.to(device) for k, v in full.items()})
    logits = out if isinstance(out, torch.Tensor) else out.logits
    pred = logits.argmax(-1).cpu()
    return [
        (pred[i, s - 1 : -1].tolist(), full["input_ids"][i, s:].tolist()) for i, s in enumerate(starts)
    ]


def token_accuracy(model, tok, prompts, targets, max_length: int = 40) -> list[float]:
    """EasyEdit's teacher-forced token accuracy of ``targets`` after ``prompts`` (strings or lists):
    one value per prompt; with several prompts, those without target tokens are left out."""
    if isinstance(prompts, str):
        prompts, targets = [prompts], [targets]
    pairs = _teacher_forced(model, tok, prompts, targets, max_length)
    accs = [float(np.mean(np.equal(p, t))) if t else float("nan") for p, t in pairs]
    return accs if len(accs) == 1 else [a for a in accs if not np.isnan(a)]


def _predictions(model, tok, prompts, targets, max_length: int) -> list[list[int]]:
    """The argmax tokens at the target positions (EasyEdit's locality outputs)."""
    if isinstance(prompts, str):
        prompts, targets = [prompts], [targets]
    return [p for p, _ in _teacher_forced(model, tok, prompts, targets, max_length)]


def _meta(result_key: str) -> dict:
    return {"result_key": result_key, **_TEACHER_FORCING_META}


def edit_quality(model, tok, request: Mapping, max_length: int = 40) -> dict:
    """EasyEdit's ``compute_edit_quality`` for one prepared request: rewrite (and rephrase) accuracy,
    locality outputs, portability accuracy."""
    target = request["target_new"]
    ret: dict[str, Any] = {"rewrite_acc": token_accuracy(model, tok, request["prompt"], target, max_length)}
    ret["metric_meta"] = {"rewrite": _meta("rewrite_acc")}
    ret["locality"], ret["portability"] = {}, {}
    if request.get("rephrase_prompt") is not None:
        ret["rephrase_acc"] = token_accuracy(model, tok, request["rephrase_prompt"], target, max_length)
        ret["metric_meta"]["rephrase"] = _meta("rephrase_acc")
    for key, item in (request.get("locality") or {}).items():
        ret["locality"][f"{key}_output"] = _predictions(model, tok, item["prompt"], item["ground_truth"], max_length)
    for key, item in (request.get("portability") or {}).items():
        ret["portability"][f"{key}_acc"] = token_accuracy(
            model, tok, item["prompt"], item["ground_truth"], max_length
        )
    return ret


def _finish_locality(metric: dict, request: Mapping) -> None:
    """``post.locality.{key}_acc``: per locality prompt, the share of its tokens predicted as before."""
    for key in request.get("locality") or {}:
        pre = metric["pre"]["locality"][f"{key}_output"]
        post = metric["post"]["locality"][f"{key}_output"]
        if len(pre) != len(post):
            raise ValueError(f"locality {key!r}: {len(pre)} outputs before the edit, {len(post)} after")
        metric["post"]["locality"][f"{key}_acc"] = [float(np.mean(np.equal(a, b))) for a, b in zip(pre, post)]
        metric["post"].setdefault("metric_meta", {})[f"locality.{key}"] = {
            "result_key": f"locality.{key}_acc", "protocol": "pre_post_argmax_token_match",
            "scorer": "token_match", "comparable_group": "locality.lm.pre_post_argmax_token_match",
        }


# ---------------------------------------------------------------------------- requests
def _as_list(value, n: int, what: str) -> list:
    if value is None:
        return [None] * n
    if isinstance(value, str):
        value = [value]
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{what}: {len(value)} given for {n} prompt(s)")
    return value


def _per_request(inputs: Mapping | None, n: int, what: str) -> list[dict]:
    """EasyEdit's ``{key: {"prompt": [...], "ground_truth": [...]}}`` → one ``{key: {...}}`` per request."""
    out: list[dict] = [{} for _ in range(n)]
    for key, item in (inputs or {}).items():
        if not isinstance(item, Mapping) or "prompt" not in item or "ground_truth" not in item:
            raise ValueError(f"{what}[{key!r}] must be a mapping with 'prompt' and 'ground_truth'")
        prompts = [item["prompt"]] if isinstance(item["prompt"], str) else list(item["prompt"])
        truths = [item["ground_truth"]] if isinstance(item["ground_truth"], str) else list(item["ground_truth"])
        if not len(prompts) == len(truths) == n:
            raise ValueError(
                f"{what}[{key!r}]: {len(prompts)} prompt(s) and {len(truths)} ground truth(s) for {n} request(s);"
                " one each per request"
            )
        for i, (p, t) in enumerate(zip(prompts, truths)):
            if p is not None:
                out[i][key] = {"prompt": p, "ground_truth": t}
    return out


def prepare_requests(
    prompts, target_new, ground_truth=None, target_neg=None, rephrase_prompts=None,
    locality_inputs=None, portability_inputs=None, subject=None,
) -> list[dict]:
    """EasyEdit's request dicts from ``edit``'s arguments (the inputs are not modified)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    n = len(prompts)
    targets = _as_list(target_new, n, "target_new")
    truths = _as_list(ground_truth, n, "ground_truth")
    subjects = _as_list(subject, n, "subject")
    for p, s in zip(prompts, subjects):
        if s is not None and s not in p:
            raise ValueError(f"subject {s!r} does not occur in prompt {p!r}")
    loc = _per_request(locality_inputs, n, "locality_inputs")
    port = _per_request(portability_inputs, n, "portability_inputs")
    requests = []
    for i in range(n):
        r = {"prompt": prompts[i], "target_new": targets[i], "ground_truth": truths[i],
             "portability": port[i], "locality": loc[i]}
        if target_neg is not None:
            r["target_neg"] = _as_list(target_neg, n, "target_neg")[i]
        if subjects[i] is not None:
            r["subject"] = subjects[i]
        if rephrase_prompts is not None:
            r["rephrase_prompt"] = _as_list(rephrase_prompts, n, "rephrase_prompts")[i]
        requests.append(r)
    return requests


# ---------------------------------------------------------------------------- the editor
def _device(spec) -> torch.device:
    """EasyEdit's ``device`` (an index or a name) → a torch device; the CPU when CUDA is absent."""
    if spec is None or (str(spec).isdigit() and not torch.cuda.is_available()):
        if spec is not None:
            log.info("hparams device %r: no CUDA device here, using the CPU", spec)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(f"cuda:{spec}" if str(spec).isdigit() else str(spec))


class BaseEditor:
    """EasyEdit's ``BaseEditor`` for ROME, r-ROME and MEMIT, editing with fastedit.

    ``hparams``: an object from ``ROMEHyperParams.from_hparams(path)`` (EasyEdit's YAML files) or any
    fastedit hyperparameters with ``alg_name`` set. ``model``/``tok``: an already loaded model
    (otherwise ``hparams.model_name`` is loaded). Other keywords go to
    :class:`~fastedit.engine.EditSession` (``templates``, ``seed``, ``stats_source``, ``mode``, ...).
    """

    @classmethod
    def from_hparams(cls, hparams: HyperParams, **options) -> "BaseEditor":
        return cls(hparams, **options)

    def __init__(self, hparams: HyperParams, model=None, tok=None, **session_options) -> None:
        if not isinstance(hparams, HyperParams):
            raise TypeError(f"hparams must be fastedit hyperparameters (from_hparams), got {type(hparams).__name__}")
        names = easyedit_names()
        alg = hparams.alg_name or get_method(hparams.METHOD).easyedit_name or hparams.METHOD
        if str(alg).upper() not in names:
            raise ValueError(f"alg_name {alg!r}: fastedit.easyedit edits with {', '.join(names)}")
        self.hparams, self.alg_name = hparams, str(alg).upper()
        self.method_class = get_method(names[self.alg_name])
        self.method = self.method_class.name
        if model is None:
            model, tok = self._load(hparams)
        elif tok is None:
            raise ValueError("pass tok= with model=")
        elif not hparams.model_parallel:
            model = model.to(_device(hparams.device))
        self.model, self.tok = model, tok
        self.model_name = hparams.model_name
        self._session_options = session_options
        self._session: EditSession | None = None

    @staticmethod
    def _load(hparams: HyperParams):
        from .models.loading import load_model

        if not hparams.model_name:
            raise ValueError("hparams has no model_name: set it in the YAML file or pass model= and tok=")
        dtype = torch.float16 if hparams.fp16 else torch.float32
        if hparams.model_parallel:
            return load_model(hparams.model_name, dtype=dtype, device_map="auto")
        return load_model(hparams.model_name, dtype=dtype, device=_device(hparams.device))

    @property
    def session(self) -> EditSession:
        """The fastedit session behind the editor (templates sampled once, statistics kept)."""
        if self._session is None:
            opts = dict(self._session_options)
            if "templates" not in opts and self.method_class.templates == "flat":  # EasyEdit's ROME family
                with torch.no_grad():
                    opts["templates"] = start_word_templates(
                        self.model, self.tok, self.hparams.context_template_length_params, seed=opts.get("seed", 0)
                    )
            self._session = EditSession(self.model, self.tok, self.method, self.hparams, **opts)
        return self._session

    def _fastedit_request(self, request: Mapping, index: int) -> EditRequest:
        if "subject" not in request:
            raise ValueError(f"request {index}: {self.alg_name} needs the subject (edit(..., subject=[...]))")
        r = dict(request)
        if self.method_class.templates == "flat" and r["target_new"] != " ":
            r["target_new"] = " " + r["target_new"]  # EasyEdit's ROME always adds the space
        return EditRequest.from_dict(r, index=index)

    def _apply(self, requests: list[Mapping], first_index: int):
        """Edit with ``requests`` as one call of the method: (edit id, weights before, seconds)."""
        sess = self.session
        before = {k: w.detach().clone() for k, w in sess.edited_weights().items()}
        reqs = [self._fastedit_request(r, first_index + i) for i, r in enumerate(requests)]
        t0 = time.perf_counter()
        result = sess.apply(reqs)
        return result.edit_id, before, time.perf_counter() - t0

    def edit(
        self, prompts, target_new, ground_truth=None, target_neg=None, rephrase_prompts=None,
        locality_inputs=None, portability_inputs=None, sequential_edit=False, verbose=True,
        keep_original_weight=False, subject=None, **kwargs,
    ):
        """Edit with each request in turn and evaluate it before and after, as EasyEdit does; returns
        ``(metrics, edited_model, weights_copy)``. ``weights_copy``: the edited weights as they were
        before the last edit. Not sequential (the default) or ``keep_original_weight``: each edit is
        undone after its evaluation."""
        if kwargs.get("requests") is not None:
            requests = [dict(r) for r in kwargs.pop("requests")]
        else:
            requests = prepare_requests(
                prompts, target_new, ground_truth, target_neg, rephrase_prompts, locality_inputs,
                portability_inputs, subject,
            )
        if self.hparams.batch_size != 1:
            raise ValueError(f"edit() edits one request at a time: batch_size is {self.hparams.batch_size} (use batch_edit)")
        return self._run([[r] for r in requests], sequential_edit and not keep_original_weight, verbose)

    def batch_edit(
        self, prompts, target_new, ground_truth=None, target_neg=None, rephrase_prompts=None,
        locality_inputs=None, portability_inputs=None, sequential_edit=False, verbose=True,
        subject=None, **kwargs,
    ):
        """Batches of ``hparams.batch_size`` requests (the methods that edit batches); otherwise as
        :meth:`edit`."""
        if not self.method_class.batched:
            raise ValueError(f"{self.alg_name} cannot edit in batches; use edit()")
        requests = prepare_requests(
            prompts, target_new, ground_truth, target_neg, rephrase_prompts, locality_inputs,
            portability_inputs, subject,
        )
        size = max(1, int(self.hparams.batch_size))
        return self._run([requests[i : i + size] for i in range(0, len(requests), size)], sequential_edit, verbose)

    def _run(self, chunks: list[list[dict]], sequential: bool, verbose: bool):
        max_len = int(self.hparams.max_length)
        flat = [r for c in chunks for r in c]
        metrics = [{"pre": edit_quality(self.model, self.tok, r, max_len)} for r in flat]
        weights_copy: dict[str, torch.Tensor] = {}
        i = 0
        for chunk in chunks:
            edit_id, weights_copy, seconds = self._apply(chunk, i)
            for r in chunk:
                m = metrics[i]
                m.update({"case_id": i, "requested_rewrite": copy.deepcopy(r), "time": seconds})
                m["post"] = edit_quality(self.model, self.tok, r, max_len)
                _finish_locality(m, r)
                if verbose:
                    log.info("%d editing: %s -> %s  %s", i, r["prompt"], r["target_new"], m["post"])
                i += 1
            if not sequential:
                self.session.undo(edit_id)
        return metrics, self.model, weights_copy
