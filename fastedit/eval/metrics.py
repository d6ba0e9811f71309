"""Edit metrics computed in batches: teacher-forced target log-probabilities and what is built on them.

The reference CounterFact evaluation compares, for a prompt, the mean token negative log-likelihood
of ``target_new`` against that of ``target_true`` (both with a leading space), teacher-forced:
the edit succeeds on that prompt when P(new) > P(true), i.e. NLL(new) < NLL(true).
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["target_logprobs", "compare_targets"]


@torch.no_grad()
def target_logprobs(
    model, tok, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 64
) -> torch.Tensor:
    """Mean log-probability per token of ``" " + target`` after each prompt, teacher-forced:
    (len(prompts),) float64 on the CPU."""
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    out = []
    for start in range(0, len(prompts), batch_size):
        rows, spans = [], []
        for prompt, target in zip(prompts[start : start + batch_size], targets[start : start + batch_size]):
            p = tok(prompt)["input_ids"]
            t = tok(" " + target.strip(), add_special_tokens=False)["input_ids"]
            rows.append(p + t)
            spans.append((len(p), len(t)))
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        logp = torch.log_softmax(logits.double(), -1).cpu()
        for i, (n_p, n_t) in enumerate(spans):
            pos = torch.arange(n_p - 1, n_p - 1 + n_t)
            tgt = ids[i, n_p : n_p + n_t]
            out.append(logp[i, pos, tgt].mean())
    return torch.stack(out) if out else torch.empty(0, dtype=torch.float64)


def compare_targets(model, tok, prompts: Sequence[str], new: Sequence[str], true: Sequence[str]) -> dict[str, torch.Tensor]:
    """Log-probabilities of the new and true targets after each prompt, and whether new beats true:
    ``{"new": (n,), "true": (n,), "success": (n,) bool}``."""
    lp_new = target_logprobs(model, tok, prompts, new)
    lp_true = target_logprobs(model, tok, prompts, true)
    return {"new": lp_new, "true": lp_true, "success": lp_new > lp_true}
