"""The editing engine: :class:`EditSession` and what lives with it.

* :mod:`~fastedit.engine.session`: the session; **modes** (``"exact"`` reproduces the reference
  updates, ``"fast"`` switches on the options of :class:`FastOptions`) and **transactions** (an edit
  that fails anywhere, an exception, a failed solve, a non-finite update, Ctrl-C, leaves the edited
  weights exactly as they were).
* :mod:`~fastedit.engine.journal`: every applied edit as its low-rank factors, off the device;
  :meth:`EditSession.undo` removes one exactly (original weights plus the float64 sum of the others).
* :mod:`~fastedit.engine.store`: :meth:`EditSession.save` / :meth:`EditSession.load`, files written
  once plus a manifest swapped in last; saving again writes only what changed; loading checks
  everything before it touches the model.
* :mod:`~fastedit.engine.pack`: :meth:`EditSession.export_pack` and :func:`apply_edit_pack`.
* :mod:`~fastedit.engine.backup`, :mod:`~fastedit.engine.checks`, :mod:`~fastedit.engine.files`: the
  one weight backup/restore, the checks of tensors read from files, whole-or-absent files.
"""

from .pack import PACK_FORMAT, apply_edit_pack
from .session import EditFailedError, EditResult, EditSession, FastOptions
from .store import SESSION_FORMAT

__all__ = ["EditSession", "EditResult", "EditFailedError", "FastOptions", "apply_edit_pack", "SESSION_FORMAT",
           "PACK_FORMAT"]
