"""Second-moment statistics C = E[k kᵀ] of the edited layers' keys.

``sources`` (text corpora and the references' sample), ``packing`` (documents packed into full rows
with block-diagonal attention), ``collect`` (one pass for all layers: early exit, checkpoints,
convergence, data-parallel), ``checkpoint``, ``distributed`` (torchrun), ``cache`` (the references' npz
layout and the sidecar), ``store`` (what the engine asks: load or compute), ``reference`` (the
references' procedure, the baseline), ``command`` (``fastedit stats``), ``synthetic``.
"""
