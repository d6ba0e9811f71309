"""The edit request: what to change, and its validation.

One type, :class:`EditRequest`, read from any of the layouts in use:

* the reference layout (kmeng01/rome, kmeng01/memit)::

      {"case_id": 0, "prompt": "{} plays the sport of", "subject": "LeBron James",
       "target_new": {"str": "football"}, "target_true": {"str": "basketball"}}

* the original CounterFact record, with the above under ``requested_rewrite`` and evaluation prompts
  beside it (``paraphrase_prompts``, ``neighborhood_prompts``, ...);
* the EasyEdit layout, with the subject written out in the prompt and plain strings::

      {"prompt": "LeBron James plays the sport of", "subject": "LeBron James",
       "target_new": "football", "ground_truth": "basketball"}

Validation happens on construction; :meth:`EditRequest.check_tokens` adds the checks that need the
tokenizer. Every error names the request and the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .errors import InputError

__all__ = ["EditRequest", "RequestError", "as_requests", "check_requests_fit"]

# A tokenizer's model_max_length above this is the "no limit" sentinel transformers uses.
_NO_LIMIT = 10**8


class RequestError(InputError):
    """A malformed edit request: the message names the request and the field."""


def _target_str(value: Any, what: str, rid: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        if "str" not in value:
            raise RequestError(f"request {rid}: {what} must be a string or {{'str': ...}}, got keys {sorted(value)}")
        value = value["str"]
    if isinstance(value, (list, tuple)):
        if not value:
            raise RequestError(f"request {rid}: {what} is an empty list")
        value = value[0]
    if not isinstance(value, str):
        raise RequestError(f"request {rid}: {what} must be a string, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class EditRequest:
    """One fact to write: ``prompt.format(subject)`` should continue with ``target_new``.

    ``prompt`` always holds exactly one ``{}`` where the subject goes. ``case_id`` identifies the
    request in results and errors. The evaluation prompts are optional and only read by
    :mod:`fastedit.eval`.
    """

    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None
    case_id: str | int | None = None
    paraphrase_prompts: tuple[str, ...] = ()
    neighborhood_prompts: tuple[str, ...] = ()
    neighborhood_answer: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        rid = self.name
        if self.case_id is not None and (isinstance(self.case_id, bool) or not isinstance(self.case_id, (int, str))):
            raise RequestError(f"request {rid}: case_id must be an integer or a string, got {type(self.case_id).__name__}")
        for key in ("prompt", "subject", "target_new"):
            if not isinstance(getattr(self, key), str):
                raise RequestError(f"request {rid}: {key} must be a string, got {type(getattr(self, key)).__name__}")
        if not self.subject.strip():
            raise RequestError(f"request {rid}: subject is empty")
        n = self.prompt.count("{}")
        if n != 1:
            raise RequestError(
                f"request {rid}: prompt {self.prompt!r} must have exactly one '{{}}' for the subject, has {n}"
            )
        if "{" in self.prompt.replace("{}", "") or "}" in self.prompt.replace("{}", ""):
            raise RequestError(f"request {rid}: prompt {self.prompt!r} has braces other than its '{{}}'")
        if "{" in self.subject or "}" in self.subject:
            raise RequestError(f"request {rid}: subject {self.subject!r} has braces (the prompts are formatted with it)")
        if not self.target_new.strip():
            raise RequestError(f"request {rid}: target_new is empty")
        if self.target_true is not None:
            if not isinstance(self.target_true, str):
                raise RequestError(f"request {rid}: target_true must be a string, got {type(self.target_true).__name__}")
            if not self.target_true.strip():
                raise RequestError(f"request {rid}: target_true is empty (leave it out instead)")

    # ------------------------------------------------------------------ identity and text
    @property
    def name(self) -> str:
        return repr(self.case_id) if self.case_id is not None else repr(self.subject)

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.format(self.subject)

    @property
    def changes_nothing(self) -> bool:
        """The new target is the true one: there is nothing to edit (refused by :func:`as_requests`;
        datasets that hold such records skip them)."""
        return self.target_true is not None and self.target_true.strip() == self.target_new.strip()

    @property
    def target_new_spaced(self) -> str:
        """``target_new`` with the leading space the references add for tokenisation."""
        return self.target_new if self.target_new.startswith(" ") else " " + self.target_new

    # ------------------------------------------------------------------ reading and writing
    @classmethod
    def from_dict(cls, record: Mapping[str, Any], index: int | None = None) -> "EditRequest":
        """Read any supported layout (see the module docstring)."""
        if not isinstance(record, Mapping):
            raise RequestError(f"request #{index}: expected a JSON object, got {type(record).__name__}")
        extra = dict(record)
        rewrite = record.get("requested_rewrite", record)
        if not isinstance(rewrite, Mapping):
            raise RequestError(f"request #{index}: requested_rewrite must be an object, got {type(rewrite).__name__}")
        case_id = record.get("case_id", rewrite.get("case_id", index))
        rid = repr(case_id) if index is None or case_id is None else (
            f"#{index}" if case_id == index else f"#{index} (case_id {case_id!r})"
        )
        for key in ("prompt", "subject", "target_new"):
            if key not in rewrite:
                raise RequestError(f"request {rid}: missing field {key!r}")
        subject, prompt = rewrite["subject"], rewrite["prompt"]
        for key, value in (("subject", subject), ("prompt", prompt)):
            if not isinstance(value, str):
                raise RequestError(f"request {rid}: {key} must be a string, got {type(value).__name__}")
        if not subject.strip():
            raise RequestError(f"request {rid}: subject is empty")
        if "{}" not in prompt:
            # EasyEdit layout: the subject is written out in the prompt.
            pos = prompt.find(subject)
            if pos < 0:
                raise RequestError(
                    f"request {rid}: subject {subject!r} not found in prompt {prompt!r}, and the prompt has no '{{}}'"
                )
            prompt = prompt[:pos] + "{}" + prompt[pos + len(subject) :]
        try:
            return cls._build(record, rewrite, prompt, subject, case_id, rid, extra)
        except RequestError as e:
            # name the request by its place in the input as well as by its case_id
            own, msg = f"request {repr(case_id) if case_id is not None else repr(subject)}:", str(e)
            if not msg.startswith(own) or msg.startswith(f"request {rid}:"):
                raise
            raise RequestError(f"request {rid}:{msg[len(own):]}") from None

    @classmethod
    def _build(cls, record, rewrite, prompt, subject, case_id, rid, extra) -> "EditRequest":
        target_new = _target_str(rewrite["target_new"], "target_new", rid)
        target_true = _target_str(rewrite.get("target_true", record.get("ground_truth")), "target_true", rid)
        para = record.get("paraphrase_prompts", record.get("rephrase_prompt", record.get("rephrase", ())))
        neigh = record.get("neighborhood_prompts", record.get("locality_prompt", ()))
        return cls(
            prompt=prompt,
            subject=subject,
            target_new=target_new,
            target_true=target_true,
            case_id=case_id,
            paraphrase_prompts=_str_tuple(para),
            neighborhood_prompts=_str_tuple(neigh),
            neighborhood_answer=_target_str(
                record.get("neighborhood_answer", record.get("locality_ground_truth")), "neighborhood_answer", rid
            ),
            extra=extra,
        )

    def to_reference_dict(self) -> dict[str, Any]:
        """The kmeng01 layout, as the reference ``apply_*_to_model`` functions take it."""
        out: dict[str, Any] = {
            "case_id": self.case_id,
            "prompt": self.prompt,
            "subject": self.subject,
            "target_new": {"str": self.target_new},
        }
        if self.target_true is not None:
            out["target_true"] = {"str": self.target_true}
        return out

    # ------------------------------------------------------------------ tokenizer checks
    def check_tokens(self, tok, max_len: int | None = None, context_tokens: int = 0) -> None:
        """Errors for a target or subject that tokenises to nothing, and for a prompt (with the
        subject, ``context_tokens`` of context template and the target) longer than ``max_len``
        tokens (default: the tokenizer's ``model_max_length``)."""
        ids = tok(self.target_new_spaced, add_special_tokens=False)["input_ids"]
        if len(ids) == 0:
            raise RequestError(f"request {self.name}: target_new {self.target_new!r} tokenises to nothing")
        subj = tok(" " + self.subject.strip(), add_special_tokens=False)["input_ids"]
        if len(subj) == 0:
            raise RequestError(f"request {self.name}: subject {self.subject!r} tokenises to nothing")
        if max_len is None:
            max_len = getattr(tok, "model_max_length", None)
        if max_len is None or max_len >= _NO_LIMIT:
            return
        need = len(tok(self.text)["input_ids"]) + len(ids) + context_tokens
        if need > max_len:
            raise RequestError(
                f"request {self.name}: prompt, subject and target take {need} tokens"
                + (f" with {context_tokens} of context" if context_tokens else "")
                + f", more than the model's context of {max_len}: shorten the subject or prompt"
            )


def _str_tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    return tuple(v for v in value if isinstance(v, str))


def as_requests(items: Iterable[EditRequest | Mapping[str, Any]] | EditRequest | Mapping[str, Any]) -> list[EditRequest]:
    """Normalise one request or an iterable of requests in any layout to :class:`EditRequest`; every
    request is checked before any is used, and an error names the request's index and field."""
    if isinstance(items, (EditRequest, Mapping)):
        items = [items]
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise RequestError(f"requests must be a request or a list of requests, got {type(items).__name__}")
    out = []
    for i, item in enumerate(items):
        req = item if isinstance(item, EditRequest) else EditRequest.from_dict(item, index=i)
        if req.changes_nothing:
            rid = f"#{i}" if req.case_id in (None, i) else f"#{i} (case_id {req.case_id!r})"
            raise RequestError(f"request {rid}: target_new {req.target_new!r} is the true target: nothing to edit")
        out.append(req)
    if not out:
        raise RequestError("no edit requests given")
    return out


def check_requests_fit(requests: Iterable[EditRequest], tok, max_len: int, templates: Iterable[str]) -> None:
    """Every request's tokens with the longest context template (its text without ``{}``) fit in
    ``max_len`` positions; :class:`RequestError` naming the request otherwise (instead of an
    index error deep inside the model)."""
    context = max((len(tok(t.replace("{}", ""), add_special_tokens=False)["input_ids"]) for t in templates), default=0)
    for r in requests:
        r.check_tokens(tok, max_len, context)
