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

__all__ = ["EditRequest", "RequestError", "as_requests"]


class RequestError(ValueError):
    """A malformed edit request."""


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
        if not isinstance(self.subject, str) or not self.subject.strip():
            raise RequestError(f"request {rid}: subject is empty")
        if not isinstance(self.prompt, str):
            raise RequestError(f"request {rid}: prompt must be a string")
        n = self.prompt.count("{}")
        if n != 1:
            raise RequestError(
                f"request {rid}: prompt {self.prompt!r} must have exactly one '{{}}' for the subject, has {n}"
            )
        if not self.target_new or not self.target_new.strip():
            raise RequestError(f"request {rid}: target_new is empty")
        if self.target_true is not None and not self.target_true.strip():
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
        case_id = record.get("case_id", rewrite.get("case_id", index))
        rid = repr(case_id)
        for key in ("prompt", "subject", "target_new"):
            if key not in rewrite:
                raise RequestError(f"request {rid}: missing field {key!r}")
        subject = rewrite["subject"]
        if not isinstance(subject, str) or not subject.strip():
            raise RequestError(f"request {rid}: subject is empty")
        prompt = rewrite["prompt"]
        if not isinstance(prompt, str):
            raise RequestError(f"request {rid}: prompt must be a string")
        if "{}" not in prompt:
            # EasyEdit layout: the subject is written out in the prompt.
            pos = prompt.find(subject)
            if pos < 0:
                raise RequestError(
                    f"request {rid}: subject {subject!r} not found in prompt {prompt!r}, and the prompt has no '{{}}'"
                )
            prompt = prompt[:pos] + "{}" + prompt[pos + len(subject) :]
        target_new = _target_str(rewrite["target_new"], "target_new", rid)
        target_true = _target_str(
            rewrite.get("target_true", record.get("ground_truth")), "target_true", rid
        )
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
    def check_tokens(self, tok) -> None:
        """Errors for a target that tokenises to nothing."""
        ids = tok(self.target_new_spaced, add_special_tokens=False)["input_ids"]
        if len(ids) == 0:
            raise RequestError(f"request {self.name}: target_new {self.target_new!r} tokenises to nothing")
        subj = tok(" " + self.subject.strip(), add_special_tokens=False)["input_ids"]
        if len(subj) == 0:
            raise RequestError(f"request {self.name}: subject {self.subject!r} tokenises to nothing")


def _str_tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    return tuple(v for v in value if isinstance(v, str))


def as_requests(items: Iterable[EditRequest | Mapping[str, Any]] | EditRequest | Mapping[str, Any]) -> list[EditRequest]:
    """Normalise one request or an iterable of requests in any layout to :class:`EditRequest`."""
    if isinstance(items, (EditRequest, Mapping)):
        items = [items]
    out = []
    for i, item in enumerate(items):
        out.append(item if isinstance(item, EditRequest) else EditRequest.from_dict(item, index=i))
    if not out:
        raise RequestError("no edit requests given")
    return out
