"""Synthetic second moments for random-weight models (parity tests, timing benchmarks).

Real statistics need real text and a real model; a random-weight model used to check numbers or time
an edit only needs a well-conditioned C of the right size, written where the engine looks for it.
"""

from __future__ import annotations

import os

import torch

from ..models.adapters import get_adapter
from .cache import SecondMoment, model_fingerprint, save_second_moment, stats_paths

__all__ = ["write_synthetic_second_moments"]


def write_synthetic_second_moments(
    model, hp, stats_dir: str | os.PathLike, n_vectors: int | None = None, scale: float = 0.5, seed: int = 0
) -> dict[int, os.PathLike]:
    """For each layer of ``hp.layers``, write Σ x xᵀ of ``n_vectors`` Gaussian vectors (default
    2·d_ff + 16, so C is positive definite) in the reference cache layout and naming, with a sidecar
    marking it synthetic. Returns layer → path."""
    adapter = get_adapter(model)
    gen = torch.Generator().manual_seed(seed)
    tmp = hp.resolve(adapter, model).rewrite_module_tmp
    paths = {}
    for layer in hp.layers:
        d = adapter.key_size(model, layer)
        n = n_vectors or 2 * d + 16
        x = torch.randn(n, d, generator=gen) * scale
        name = tmp.format(layer)
        path = stats_paths(stats_dir, model.config._name_or_path, hp.mom2_dataset, name, hp.mom2_dtype, hp.mom2_n_samples)[0]
        meta = {
            "model": model.config._name_or_path,
            "model_fingerprint": model_fingerprint(model),
            "layer": name,
            "width": d,
            "dtype": hp.mom2_dtype,
            "tokens": n,
            "corpus": f"synthetic: Gaussian, scale {scale}, seed {seed}",
            "writer": "fastedit",
        }
        mom2 = (x.T @ x).to(getattr(torch, hp.mom2_dtype))
        save_second_moment(path, SecondMoment(mom2=mom2, count=n, sample_size=hp.mom2_n_samples), meta)
        paths[layer] = path
    return paths
