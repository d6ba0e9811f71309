"""fastedit's own one-call entry point."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from .engine import EditResult, EditSession
from .hparams import HyperParams
from .requests import EditRequest

__all__ = ["edit"]


def edit(
    model,
    tok,
    requests: Iterable[EditRequest | Mapping[str, Any]] | EditRequest | Mapping[str, Any],
    method: str = "memit",
    hparams: str | Mapping[str, Any] | HyperParams | None = None,
    **session_options,
) -> EditResult:
    """Edit ``model`` in place and return an :class:`~fastedit.engine.EditResult`.

    ``method``: ``"rome"``, ``"r-rome"`` or ``"memit"``; ``hparams``: a preset name, a reference hparams
    JSON file, a dict or a hyperparameter object (default: the preset matching the model's name).
    Other keywords go to :class:`~fastedit.engine.EditSession` (``templates``, ``seed``,
    ``stats_dir``, ``stats_source``, ...). For many edits of one model keep an ``EditSession``.

    Example::

        model, tok = fastedit.load_model("smollm2-135m")
        result = fastedit.edit(model, tok, {"prompt": "{} is the capital of", "subject": "Paris",
                                            "target_new": "Italy"}, method="memit",
                               stats_source=fastedit.bundled.WIKIPEDIA_SAMPLE)   # or "wikipedia", streamed
    """
    return EditSession(model, tok, method, hparams, **session_options).apply(requests)
