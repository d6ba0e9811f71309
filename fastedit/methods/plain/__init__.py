"""A deliberately plain, reference-style implementation of every method, one file per method.

It keeps the structure (and so the cost) of kmeng01/rome and kmeng01/memit: whole-model forward
passes with hooks, full logits over every position, ``torch.optim.Adam`` with a host-side loss check
every step and the last forward pass run only for its loss, one request at a time, separate passes
for keys, current outputs and z, ``torch.inverse`` and ``torch.linalg.solve``. It shares no code with
fastedit's engine, which makes it two things:

* the independent implementation the parity tests compare fastedit against (run it on a float64
  model and everything, δ included, is float64);
* the same-process baseline of the end-to-end benchmarks (``benchmarks/bench_edit.py``).

Requests are reference-layout dicts (``prompt`` with ``{}``, ``subject``, ``target_new`` as a string).
Hyperparameters are a dict of the reference keys. Statistics come from the reference npz files.
"""

from __future__ import annotations

from .alphaedit import alphaedit, null_space_projection
from .common import read_second_moment, subject_index
from .emmet import emmet
from .encore import encore
from .memit import memit
from .rome import rome

__all__ = ["rome", "memit", "alphaedit", "emmet", "encore", "null_space_projection", "subject_index", "read_second_moment"]
