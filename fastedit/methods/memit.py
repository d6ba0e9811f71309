"""MEMIT: a batch of requests spread over several layers.

1. z for every request: the target-value optimisation with δ on the block output of the last edit
   layer L, on the unedited model (all requests of the batch optimised together, each on its own);
2. for each layer l of ``hp.layers`` in order, on the model carrying the updates of the layers
   before it:

   * K (d_ff × n): the keys at l, averaged within each template group and then across the groups
     (0.5 · bare prompt + 0.5 · mean of the prefixed ones);
   * z_current: the block-L output for the bare request prompt at the lookup token;
   * R = (Z − z_current) / (number of layers left);
   * ΔW_l = R adj_kᵀ with adj_k = (λC + KKᵀ)⁻¹K (the reference solves it in float64 with LU; the
     engine passes a Cholesky/Woodbury solver, see :class:`WoodburySolver`);
   * W_l += ΔW_l (cast to the weight's dtype) before the next layer.

The keys and z_current of every layer come from the template prompts' activations: the first pass
runs the model up to block L; after W_l changes, the next pass restarts from the residual stream
entering block l (which the change cannot affect) instead of from the embeddings. Above layer l only
the bare prompts go on to block L (z_current is read there alone), on fastedit's own forward.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from .. import ops
from ..errors import NumericalError
from ..hparams import MEMITHyperParams
from ..models.adapters import ModelAdapter
from ..models.stack import owned_reader
from ..models.tracing import record
from ..profiling import region
from ..requests import EditRequest, check_requests_fit
from .base import LowRankUpdate, MethodOutput, apply_update, resolve_dtype
from .keys import lookup_index, pad_batch
from .registry import EditMethod, register
from .target import compute_target_values

log = logging.getLogger(__name__)

KEY_CHUNK_TOKENS = 16384  # padded tokens per pass of the key reader: bounds its memory in large batches

__all__ = ["memit_updates", "MemitKeyReader", "lu_solver", "WoodburySolver", "check_solve", "MemitFamily", "MEMIT"]

Solver = Callable[[int, torch.Tensor], torch.Tensor]

# A solve is refused when its pivots say the matrix is singular to the precision of its data (the
# pivot-ratio estimate of the condition number × the epsilon of the statistics' dtype, float32 as
# stored, above CONDITION_TOL: directions of C below its rounding carry no information; healthy
# statistics sit near 1e3, statistics from fewer vectors than the width near 1e8), or when the
# normwise backward error ‖AX − K‖ / (‖A‖‖X‖ + ‖K‖) of its result is above RESIDUAL_TOL.
CONDITION_TOL = 1.0
RESIDUAL_TOL = 1e-3


def _check_conditioning(pivots: torch.Tensor, power: int, layer: int, what: str, data_dtype: torch.dtype) -> None:
    """``pivots``: the diagonal of a Cholesky (power 2) or LU (power 1) factor of A, whose entries
    were known to ``data_dtype`` precision."""
    p = pivots.abs().double()
    cond = float((p.max() / p.min()) ** power) if float(p.min()) > 0 else float("inf")
    eps = max(torch.finfo(pivots.dtype).eps, torch.finfo(data_dtype).eps)
    if not cond * eps <= CONDITION_TOL:
        raise NumericalError(
            f"layer {layer}: {what} is singular to the precision of its statistics (condition number at least "
            f"{cond:.3g}); the statistics are degenerate: recompute them from more text"
        )


def check_solve(second_moment, weight: float, layer: int, k: torch.Tensor, x: torch.Tensor) -> None:
    """Raise :class:`NumericalError` unless X (d_ff, n) solves (λC + KKᵀ) X = K (K (d_ff, n)) to a
    normwise backward error of at most ``RESIDUAL_TOL`` (computed in C's dtype, float32: the check
    needs no float64 copy of C)."""
    if not bool(torch.isfinite(x).all()):
        raise NumericalError(f"layer {layer}: the solve gave non-finite values")
    c = second_moment(layer)
    xc, kc = x.to(c), k.to(c)
    resid = weight * (c @ xc) + kc @ (kc.T @ xc) - kc
    a_norm = weight * float(c.norm()) + float(kc.norm()) ** 2
    err = float(resid.norm()) / (a_norm * float(xc.norm()) + float(kc.norm()))
    if not err <= RESIDUAL_TOL:
        raise NumericalError(
            f"layer {layer}: the solve of (λC + KKᵀ) X = K is inaccurate (backward error {err:.2e} > {RESIDUAL_TOL:g})"
        )


class MemitKeyReader:
    """Keys at each edit layer and z_current, for every request × template, read in passes that
    restart from the first layer changed since the previous pass.

    ``read(i)`` returns (K (d_ff, n) group-averaged keys at ``hp.layers[i]``, z_current
    (d_model, n)); call it for i = 0, 1, ... in order, applying layer i's update in between.
    The texts run sorted by length in chunks of at most ``chunk_tokens`` padded tokens, so a large
    batch pads each text to its neighbours' length, not to the longest of all (only rounding changes).
    """

    def __init__(self, model, tok, adapter: ModelAdapter, requests: list[EditRequest], hp, groups,
                 chunk_tokens: int = KEY_CHUNK_TOKENS) -> None:
        self.model, self.adapter, self.hp, self.groups = model, adapter, hp, groups
        flat = [t for g in groups for t in g]
        self.n_req, self.n_t, self.bare = len(requests), len(flat), flat.index("{}")
        texts, pos = [], []
        for req in requests:
            for t in flat:
                filled = t.format(req.prompt)
                texts.append(filled.format(req.subject))
                pos.append(lookup_index(tok, filled, req.subject, hp.fact_token, hp.subject_index_rule))
        device = next(model.parameters()).device
        ids = tok(texts)["input_ids"]
        self.chunks = []  # (indices into texts, their TokenBatch, their lookup positions)
        for idx in _length_chunks([len(x) for x in ids], chunk_tokens):
            self.chunks.append((torch.tensor(idx, device=device), pad_batch(tok, [ids[j] for j in idx], device),
                                torch.tensor([pos[j] for j in idx], device=device)))
        self.block = hp.layer_module_tmp
        self.rewrite = hp.rewrite_module_tmp
        self.z_block = self.block.format(hp.layers[-1])
        # fastedit's own forward reads the same activations without module calls, where it covers the model
        self.owned = owned_reader(model, adapter, hp, sorted({*hp.layers, *(l - 1 for l in hp.layers if l > 0)}))
        # per chunk, the residual stream entering block hp.layers[i-1], and its rows of bare prompts
        self._streams: list[torch.Tensor | None] = [None] * len(self.chunks)
        self._bare_rows = [torch.nonzero(idx % self.n_t == self.bare).flatten() for idx, _, _ in self.chunks]

    @torch.no_grad()
    def read(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        layers = self.hp.layers
        # the stream entering the next pass's first layer, layers[i] (unchanged by W_{layers[i]})
        keep = layers[i] - 1 if i + 1 < len(layers) and layers[i] > 0 else None
        n = self.n_req * self.n_t
        keys = z_all = None
        for c, (idx, batch, pos) in enumerate(self.chunks):
            stream = self._streams[c] if i > 0 else None
            run = self._owned_pass if self.owned is not None else self._hooked_pass
            key, z_rows, z, self._streams[c] = run(batch, stream, layers[i - 1] if stream is not None else 0,
                                                   layers[i], keep, self._bare_rows[c])
            k_c = key[torch.arange(len(idx), device=idx.device), pos]
            z_c = z[torch.arange(len(z_rows), device=idx.device), pos[z_rows]]
            if keys is None:
                keys, z_all = k_c.new_empty(n, k_c.shape[-1]), z_c.new_empty(n, z_c.shape[-1])
            keys[idx.to(keys.device)], z_all[idx[z_rows].to(z_all.device)] = k_c, z_c
        z_cur = z_all.reshape(self.n_req, self.n_t, -1)[:, self.bare]
        return self._average(keys), z_cur.T

    @torch.no_grad()
    def read_all(self) -> dict[int, torch.Tensor]:
        """{layer: K (d_ff, n)} at every edit layer from one pass over the model as it is now (no
        update between the layers: the keys of a batch already written, AlphaEdit's edit history)."""
        layers, n = self.hp.layers, self.n_req * self.n_t
        keys: dict[int, torch.Tensor] = {}
        for idx, batch, pos in self.chunks:
            if self.owned is not None:
                got = self.owned.read(self.owned.embed(batch.input_ids), batch.attention_mask, 0, layers[-1] + 1,
                                      mlp_inputs=layers)
                per_layer = {layer: got["mlp_in", layer] for layer in layers}
            else:
                names = {layer: self.rewrite.format(layer) for layer in layers}
                with record(self.model, inputs=list(names.values()), stop_after=self.block.format(layers[-1])) as rec:
                    self.model(**batch.model_inputs(), use_cache=False)
                per_layer = {layer: rec.inputs[name] for layer, name in names.items()}
            for layer, k in per_layer.items():
                k_c = k[torch.arange(len(idx), device=idx.device), pos]
                if layer not in keys:
                    keys[layer] = k_c.new_empty(n, k_c.shape[-1])
                keys[layer][idx.to(k_c.device)] = k_c
        return {layer: self._average(k) for layer, k in keys.items()}

    def _average(self, keys: torch.Tensor) -> torch.Tensor:
        """Per-text keys (n_req · n_t, d_ff), request-major → K (d_ff, n_req): the mean within each
        template group, then across the groups, as the reference's compute_ks."""
        keys = keys.reshape(self.n_req, self.n_t, -1)
        bounds, start = [], 0
        for g in self.groups:
            bounds.append((start, start + len(g)))
            start += len(g)
        return torch.stack([keys[:, a:b].mean(1) for a, b in bounds], 1).mean(1).T

    def _owned_pass(self, batch, stream, start: int, layer: int, keep: int | None, bare_rows: torch.Tensor):
        """Layers ``start`` .. ``layer`` on fastedit's own forward for every row, from ``stream`` (the
        residual stream entering ``start``) or the embeddings, then up to the z layer for the rows of
        bare prompts only (z_current is read there alone) → (keys at ``layer`` (B, S, d_ff), the rows
        z was computed for, their z-layer outputs, the stream entering ``keep`` + 1 (B, S, d) or None)."""
        z_layer = self.hp.layers[-1]
        hidden = stream if stream is not None else self.owned.embed(batch.input_ids)
        got = self.owned.read(hidden, batch.attention_mask, start, layer + 1, blocks=(layer, keep),
                              mlp_inputs=(layer,))
        z = got["block", layer][bare_rows]
        if z_layer > layer and len(bare_rows):
            z = self.owned.read(z, batch.attention_mask[bare_rows], layer + 1, z_layer + 1,
                                blocks=(z_layer,))["block", z_layer]
        return got["mlp_in", layer], bare_rows, z, got.get(("block", keep))

    def _hooked_pass(self, batch, stream, start: int, layer: int, keep: int | None, bare_rows: torch.Tensor):
        """As :meth:`_owned_pass`, through the model's modules with hooks (every row to the z layer)."""
        key_name = self.rewrite.format(layer)
        outputs = [self.z_block] + ([self.block.format(keep)] if keep is not None else [])
        with record(self.model, inputs=[key_name], outputs=outputs, stop_after=self.z_block) as rec:
            if stream is None:
                self.model(**batch.model_inputs(), use_cache=False)
            else:
                with self.adapter.upper_layers_only(self.model, start) as base:
                    base(inputs_embeds=stream, attention_mask=batch.attention_mask, use_cache=False)
        z = rec.outputs[self.z_block]
        every = torch.arange(z.shape[0], device=z.device)
        return rec.inputs[key_name], every, z, rec.outputs[outputs[1]] if keep is not None else None


def _length_chunks(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Indices sorted by length, cut into runs whose padded size (count × longest) stays within
    ``max_tokens`` (at least one index each)."""
    out, cur = [], []
    for j in sorted(range(len(lengths)), key=lambda j: lengths[j]):
        if cur and (len(cur) + 1) * lengths[j] > max_tokens:
            out.append(cur)
            cur = []
        cur.append(j)
    return out + [cur] if cur else out


def lu_solver(second_moment, weight: float, dtype: torch.dtype) -> Solver:
    """The reference's solve: ``torch.linalg.solve(λC + KKᵀ, K)`` (LU) in ``dtype``."""

    def solve(layer: int, k: torch.Tensor) -> torch.Tensor:
        stored = second_moment(layer)
        lu, piv = torch.linalg.lu_factor(weight * stored.to(dtype) + k @ k.T)
        _check_conditioning(lu.diagonal(), 1, layer, "λC + KKᵀ", stored.dtype)
        return torch.linalg.lu_solve(lu, piv, k)

    return solve


class WoodburySolver:
    """(λC + KKᵀ)⁻¹K through a Cholesky factor of λC kept per layer:

        (A + KKᵀ)⁻¹K = A⁻¹K (I + KᵀA⁻¹K)⁻¹,  A = λC,

    O(d_ff² n) per call after one O(d_ff³) factorisation per layer, instead of O(d_ff³) per call.
    A λC that is not positive definite, or singular to working precision, fails the edit
    (:class:`~fastedit.errors.NumericalError`): its solves would be meaningless.
    """

    def __init__(self, second_moment, weight: float, dtype: torch.dtype) -> None:
        self.second_moment, self.weight, self.dtype = second_moment, weight, dtype
        self.factors: dict[int, torch.Tensor | None] = {}

    def factor(self, layer: int) -> torch.Tensor:
        if layer not in self.factors:
            stored = self.second_moment(layer)
            a = self.weight * stored.to(self.dtype)
            try:
                chol = ops.cholesky(a)
            except ops.NotPositiveDefiniteError as e:
                raise NumericalError(
                    f"layer {layer}: λC is not positive definite ({e}); the statistics are degenerate: "
                    "recompute them from more text"
                ) from None
            _check_conditioning(chol.diagonal(), 2, layer, "λC", stored.dtype)
            self.factors[layer] = chol
        return self.factors[layer]

    def __call__(self, layer: int, k: torch.Tensor) -> torch.Tensor:
        chol = self.factor(layer)
        x = ops.cholesky_solve(chol, k)  # A⁻¹K, (d_ff, n)
        core = torch.eye(k.shape[1], dtype=k.dtype, device=k.device) + k.T @ x  # (n, n), SPD
        return ops.spd_solve(core, x.T).T  # X core⁻¹ (core is symmetric)


def memit_updates(
    model,
    tok,
    adapter: ModelAdapter,
    requests: list[EditRequest],
    hp,
    groups: list[list[str]],
    solve: Solver,
    precomputed_z: dict[int, torch.Tensor] | None = None,
    target_options: dict | None = None,
    apply=apply_update,
    reference_dtype: torch.dtype = torch.float64,
) -> MethodOutput:
    """The MEMIT family's updates for a batch, applied to ``model`` layer by layer as they are computed:
    ΔW_l = adj_l R_lᵀ with adj_l = ``solve(layer, K_l)`` (d_ff, n), the method's own solve (MEMIT's:
    (λC + KKᵀ)⁻¹K), and R_l the target residual spread over the layers left.

    ``hp`` is resolved (:meth:`~fastedit.hparams.HyperParams.resolve`). ``precomputed_z`` maps a
    request's index in ``requests`` to a z (d_model,) computed earlier (the reference's
    ``cache_template``). ``target_options`` go to :func:`compute_target_values`; ``apply(model,
    adapter, update)`` writes an update into the weights. K and R are cast to ``reference_dtype``
    (the method's solve precision) unless ``hp.solve_dtype`` names another.
    """
    hp = hp.resolve(adapter, model)  # a no-op for a session's hyperparameters
    flat = [t for g in groups for t in g]
    check_requests_fit(requests, tok, adapter.max_positions(model), flat)
    precomputed_z = precomputed_z or {}
    todo = [i for i in range(len(requests)) if i not in precomputed_z]
    dtype = resolve_dtype(hp, reference_dtype)
    z_list: list[torch.Tensor | None] = [precomputed_z.get(i) for i in range(len(requests))]
    target = None
    if todo:
        target = compute_target_values(
            model, tok, adapter, [requests[i] for i in todo], flat, hp, hp.layers[-1], delta_site="block",
            nll_from="loss_layer", delta_dtype=torch.float64 if hp.solve_dtype == "float64" else None,
            **(target_options or {}),
        )
        for j, i in enumerate(todo):
            z_list[i] = target.values[j]
    zs = torch.stack([z.to(dtype) for z in z_list], 1)  # (d_model, n)
    reader = MemitKeyReader(model, tok, adapter, requests, hp, groups)
    updates, z_errors = [], []
    for i, layer in enumerate(hp.layers):
        with region("keys"):
            k, z_cur = reader.read(i)
        with region("solve"):
            k = k.to(dtype)
            resid_all = zs.to(z_cur.device) - z_cur.to(dtype)
            z_errors.append(float(resid_all.norm(dim=0).mean()))
            adj_k = solve(layer, k)  # (d_ff, n)
            # with a device_map, layer l and block L may sit on different devices
            resid = (resid_all / (len(hp.layers) - i)).to(adj_k.device)  # (d_model, n)
        upd = LowRankUpdate(f"{hp.rewrite_module_tmp.format(layer)}.weight", layer, adj_k, resid)
        with region("apply"):
            apply(model, adapter, upd)
        updates.append(upd)
    info = {"target": [target] if target is not None else [], "z_error": z_errors, "z": zs}
    return MethodOutput(updates, info)


class MemitFamily(EditMethod):
    """Methods that edit a batch over several layers with MEMIT's keys and target values and differ in
    the solve: a subclass defines :meth:`solve` (and may add an edit history)."""

    templates = "groups"
    batched = True
    reference_dtype = torch.float64  # the precision of the method's own solve

    def solve(self, layer: int, k: torch.Tensor) -> torch.Tensor:
        """adj (d_ff, n) such that ΔW = adj Rᵀ, for the keys K (d_ff, n) of ``layer``."""
        raise NotImplementedError

    def target_options(self) -> dict:
        """Options of the target-value optimisation (the session's fast-mode ones by default)."""
        return self.session.target_options()

    def compute(self, requests, precomputed_z=None) -> MethodOutput:
        s = self.session
        s.stats.ensure(s.hp.layers)
        return memit_updates(
            s.model, s.tok, s.adapter, requests, s.hp, s.templates, self.solve, precomputed_z=precomputed_z,
            target_options=self.target_options(), apply=s.apply_update, reference_dtype=self.reference_dtype,
        )

    @property
    def dtype(self) -> torch.dtype:
        """The solve's dtype: ``hp.solve_dtype`` or the method's reference precision."""
        return resolve_dtype(self.session.hp, self.reference_dtype)


@register
class MEMIT(MemitFamily):
    """MEMIT (Meng et al. 2023), kmeng01/memit: adj = (λC + KKᵀ)⁻¹K, λ = ``mom2_update_weight``.

    The session's ``solver="cholesky"`` (default) solves through a Cholesky factor of λC kept per
    layer (:class:`WoodburySolver`); ``solver="lu"`` refactorises λC + KKᵀ every edit, as the
    reference does."""

    name = "memit"
    hparams_class = MEMITHyperParams
    easyedit_name = "MEMIT"

    def __init__(self, session) -> None:
        super().__init__(session)
        s = session
        if s.solver_kind == "lu":
            self._solver = lu_solver(s.stats.second_moment, s.hp.mom2_update_weight, self.dtype)
        else:
            self._solver = WoodburySolver(s.stats.second_moment, s.hp.mom2_update_weight, self.dtype)

    def solve(self, layer: int, k: torch.Tensor) -> torch.Tensor:
        adj = self._solver(layer, k)
        check_solve(self.session.stats.second_moment, self.session.hp.mom2_update_weight, layer, k, adj)
        return adj
