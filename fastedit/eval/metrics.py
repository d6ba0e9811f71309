"""Edit metrics computed in batches: teacher-forced target log-probabilities and what is built on them.

Everything here scores continuations: a prompt followed by a target, both tokenised apart (the
prompt with the tokenizer's special tokens, the target as ``" " + target`` without), teacher-forced.
The references tokenise ``f"{prompt} {target}"`` in one piece and cut it at the prompt's length,
which is the same token sequence wherever the tokenizer splits words at a space (byte-level BPE
tokenizers such as GPT-2's, Llama 3's and SmolLM2's do).
:func:`score_continuations` runs all (prompt, target) pairs of a call through the model in padded
batches on the model's device, one row per distinct token sequence (a prompt whose targets are
single tokens needs one row for all of them), rows sorted by length and left-padded, logits
computed only where they are read.

CounterFact, as kmeng01's ``experiments/py/eval_utils_counterfact.py`` and ``summarize.py`` compute
it (:func:`score_counterfact`, :func:`summarize_scores`):

* per prompt, the mean token NLL of ``target_new`` and of ``target_true``;
* rewrite and paraphrase success: NLL(new) < NLL(true), i.e. P(new) > P(true) with P the
  exponentiated mean token log-probability; neighbourhood success: NLL(true) < NLL(new);
* magnitudes (``*_prob_diff``): exp(-NLL(new)) - exp(-NLL(true)) (neighbourhood: true minus new);
* ``*_argmax_acc``: every token of the correct target (new on rewrite and paraphrase prompts, true
  on neighbourhood prompts) is the argmax given the prompt and the target tokens before it;
* per request, the mean over its prompts; over requests, the mean of those, and the overall score
  is the harmonic mean of rewrite, paraphrase and neighbourhood success.

The neighbourhood prompts are scored against ``request.neighborhood_answer`` where it is set, else
``target_true``. In the original CounterFact layout the answer is ``target_true`` (the loaders set
it so), and in the simplified layout it is ``locality_ground_truth``, which in the CounterFact files
equals ``ground_truth`` in every record: either way the neighbourhood score is the reference's
P(answer) > P(target_new) on the neighbour: did the new object leak into a subject it should not
touch. Where a locality answer differs from ``target_true`` the same comparison applies to it, and
``neighborhood_argmax_acc`` and the raw ``neighborhood_nll_answer`` (compare before and after an
edit) say whether the model's own answer survived.

zsRE, as ``eval_utils_zsre.py`` computes it (:func:`score_zsre`): the fraction of target tokens that
are the argmax given the prompt and the previous target tokens, for ``target_new`` on the rewrite
and paraphrase prompts and for the neighbourhood answer on the neighbourhood prompts. The
reference decodes and re-encodes prompt plus target prefix for each token; this teacher-forces the
target tokens directly, which is the same wherever decoding round-trips.

Fluency, as ``test_generation`` computes it (:func:`generation_entropy`): texts sampled top-k 5 to
100 tokens including the prompt (kmeng01's ``generate_fast``), scored by the weighted entropy of
their word 2- and 3-grams (weights 2/3 and 4/3), averaged over texts.
"""

from __future__ import annotations

import copy
import inspect
import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch

__all__ = [
    "target_logprobs",
    "compare_targets",
    "ContinuationScore",
    "score_continuations",
    "encode_prompt",
    "encode_target",
    "score_counterfact",
    "score_zsre",
    "summarize_scores",
    "harmonic_mean",
    "generate_texts",
    "generation_entropy",
    "n_gram_entropy",
    "compute_n_gram_entropy",
    "word_tokenize",
]


# ---------------------------------------------------------------------------------- the core
@dataclass(frozen=True)
class ContinuationScore:
    """Teacher-forced scores of one target after one prompt: ``logprobs`` (n_target_tokens,) float64,
    the log-probability of each target token; ``correct`` (n_target_tokens,) bool, whether each was
    the argmax given what precedes it."""

    logprobs: torch.Tensor
    correct: torch.Tensor

    @property
    def mean_logprob(self) -> float:
        return float(self.logprobs.mean())

    @property
    def nll(self) -> float:
        """Mean token negative log-likelihood, the reference's per-prompt "prob"."""
        return -self.mean_logprob

    @property
    def all_correct(self) -> bool:
        return bool(self.correct.all())

    @property
    def token_accuracy(self) -> float:
        return float(self.correct.double().mean())


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _forward_params(model) -> Mapping[str, inspect.Parameter]:
    return inspect.signature(type(model).forward).parameters


def _cache_kwarg(model) -> str:
    # transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns).
    return "cache" if "cache" in _forward_params(model) else "past_key_values"


def _output_cache(out) -> Any:
    cache = out.get("cache") if hasattr(out, "get") else None
    return cache if cache is not None else out.past_key_values


def _pad_id(tok) -> int:
    for value in (tok.pad_token_id, tok.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def encode_prompt(tok, text: str) -> list[int]:
    """A prompt's token ids, with the tokenizer's special tokens (BOS where it adds one)."""
    return list(tok(text)["input_ids"])


def encode_target(tok, target: str) -> list[int]:
    """A target's token ids: ``" " + target`` without special tokens. The references tokenise
    ``f" {target}"`` (with special tokens, which puts a BOS inside the sequence for Llama-style
    tokenizers; leaving them out is deliberate); the target is stripped first so one given with its
    leading space gets one space, not two."""
    ids = list(tok(" " + target.strip(), add_special_tokens=False)["input_ids"])
    if not ids:
        raise ValueError(f"target {target!r} tokenises to nothing")
    return ids


def _shared_rows(items: Sequence[tuple[Sequence[int], Sequence[int]]]) -> tuple[list[tuple[int, ...]], list[list[int]]]:
    """The distinct model rows ``prompt + target[:-1]`` of ``items`` and, per row, the items that read it."""
    row_of: dict[tuple[int, ...], int] = {}
    rows: list[tuple[int, ...]] = []
    users: list[list[int]] = []
    for i, (prompt, target) in enumerate(items):
        if len(prompt) == 0:
            raise ValueError(f"item {i}: empty prompt (nothing to predict the first target token from)")
        if len(target) == 0:
            raise ValueError(f"item {i}: empty target")
        row = tuple(prompt) + tuple(target[:-1])
        if row not in row_of:
            row_of[row] = len(rows)
            rows.append(row)
            users.append([])
        users[row_of[row]].append(i)
    return rows, users


@torch.no_grad()
def score_continuations(
    model,
    items: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int = 64,
    prefix_ids: Sequence[int] = (),
    pad_id: int = 0,
) -> list[ContinuationScore]:
    """Teacher-forced scores of ``target`` after ``prompt`` for each ``(prompt_ids, target_ids)``.

    ``prefix_ids`` is a shared context before every prompt (a few-shot prefix): it runs through the
    model once and its key/value cache is reused by every batch. Each row is ``prompt + target[:-1]``;
    items with the same row share it; ``batch_size`` rows go through the model at once. Prompts
    must be non-empty. Returns one :class:`ContinuationScore` per item, on the CPU.
    """
    device = _model_device(model)
    params = _forward_params(model)
    keep_logits = "logits_to_keep" in params
    cache_kw = _cache_kwarg(model)

    rows, users = _shared_rows(items)

    prefix_cache = None
    n_prefix = len(prefix_ids)
    if n_prefix:
        ids = torch.tensor([list(prefix_ids)], dtype=torch.long, device=device)
        out = model(input_ids=ids, use_cache=True, **({"logits_to_keep": 1} if keep_logits else {}))
        prefix_cache = _output_cache(out)

    results: list[ContinuationScore | None] = [None] * len(items)
    # Longest first, so rows of a batch have similar lengths (little padding). Rows are left-padded
    # with explicit positions, so every row ends at the last column and only the last few columns'
    # logits are computed: the output projection over the vocabulary is a large share of a short
    # prompt's cost, and logits of every position would not fit memory for large vocabularies.
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r]))
    for b0 in range(0, len(order), batch_size):
        batch = order[b0 : b0 + batch_size]
        width = len(rows[batch[0]])
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for j, r in enumerate(batch):
            ids[j, width - len(rows[r]) :] = torch.tensor(rows[r])
            mask[j, width - len(rows[r]) :] = 1
        position = (mask.cumsum(1) - 1).clamp(min=0) + n_prefix
        # How many trailing columns any item of the batch reads.
        keep = max(len(rows[r]) - len(items[i][0]) + 1 for r in batch for i in users[r])
        kwargs: dict[str, Any] = {"use_cache": prefix_cache is not None}
        if keep_logits:
            kwargs["logits_to_keep"] = keep
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(batch))
            kwargs[cache_kw] = cache
            mask = torch.cat([torch.ones((len(batch), n_prefix), dtype=torch.long), mask], dim=1)
        logits = model(
            input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position.to(device), **kwargs
        ).logits
        for j, r in enumerate(batch):
            # Row token t sits in column width - len(row) + t; logits[:, 0] is column width - kept.
            shift = logits.shape[1] - len(rows[r])
            for i in users[r]:
                prompt, target = items[i]
                pos = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(target), device=logits.device)
                # float64 log-softmax over the few positions read, as target_logprobs always did.
                logp = torch.log_softmax(logits[j, pos + shift].double(), dim=-1)
                tgt = torch.tensor(list(target), device=logits.device)
                results[i] = ContinuationScore(
                    logprobs=logp.gather(1, tgt[:, None])[:, 0].cpu(),
                    correct=(logp.argmax(-1) == tgt).cpu(),
                )
    return results  # type: ignore[return-value]


def _score_texts(
    model, tok, pairs: Sequence[tuple[str, str]], batch_size: int
) -> list[ContinuationScore]:
    """:func:`score_continuations` for (prompt text, target text) pairs, tokenising each distinct
    string once."""
    prompt_ids: dict[str, list[int]] = {}
    target_ids: dict[str, list[int]] = {}
    items = []
    for prompt, target in pairs:
        if prompt not in prompt_ids:
            prompt_ids[prompt] = encode_prompt(tok, prompt)
        if target not in target_ids:
            target_ids[target] = encode_target(tok, target)
        items.append((prompt_ids[prompt], target_ids[target]))
    return score_continuations(model, items, batch_size=batch_size, pad_id=_pad_id(tok))


# ---------------------------------------------------------------------------------- simple scores
@torch.no_grad()
def target_logprobs(
    model, tok, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 64
) -> torch.Tensor:
    """Mean log-probability per token of ``" " + target`` after each prompt, teacher-forced:
    (len(prompts),) float64 on the CPU."""
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    scores = _score_texts(model, tok, list(zip(prompts, targets)), batch_size)
    if not scores:
        return torch.empty(0, dtype=torch.float64)
    return torch.stack([s.logprobs.mean() for s in scores])


def compare_targets(model, tok, prompts: Sequence[str], new: Sequence[str], true: Sequence[str]) -> dict[str, torch.Tensor]:
    """Log-probabilities of the new and true targets after each prompt, and whether new beats true:
    ``{"new": (n,), "true": (n,), "success": (n,) bool}``."""
    n = len(prompts)
    lp = target_logprobs(model, tok, list(prompts) * 2, list(new) + list(true))
    lp_new, lp_true = lp[:n], lp[n:]
    return {"new": lp_new, "true": lp_true, "success": lp_new > lp_true}


# ---------------------------------------------------------------------------------- CounterFact
def _mean(values: Sequence[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def score_counterfact(model, tok, requests: Sequence, batch_size: int = 64) -> list[dict]:
    """CounterFact scores of each request (see the module docstring), all prompts of all requests
    in shared batches.

    One dict per request: ``case_id``; for ``rewrite``, ``paraphrase`` and ``neighborhood``:
    ``{key}_success`` (fraction of the prompts where the right target wins), ``{key}_prob_diff``
    (mean probability margin of the right target), ``{key}_argmax_acc`` (fraction of prompts whose
    right target is the all-tokens argmax), ``{key}_token_acc`` (fraction of the right target's
    tokens that are the argmax), and the raw per-prompt mean token NLLs ``{key}_nll_new`` and
    ``{key}_nll_true`` (neighbourhood: ``neighborhood_nll_new``, ``neighborhood_nll_answer``). A
    request without paraphrase or neighbourhood prompts gets ``None`` for those keys.
    """
    from ..requests import as_requests

    reqs = as_requests(requests) if requests else []
    pairs: list[tuple[str, str]] = []
    layout = []  # per request: (group, prompts, right target, wrong target) index ranges into pairs
    for r in reqs:
        if r.target_true is None:
            raise ValueError(f"request {r.name}: CounterFact scores need target_true (score_zsre needs none)")
        answer = r.neighborhood_answer or r.target_true
        groups = []
        for key, prompts, right, wrong in (
            ("rewrite", (r.text,), r.target_new, r.target_true),
            ("paraphrase", r.paraphrase_prompts, r.target_new, r.target_true),
            ("neighborhood", r.neighborhood_prompts, answer, r.target_new),
        ):
            start = len(pairs)
            for p in prompts:
                pairs += [(p, right), (p, wrong)]
            groups.append((key, start, len(prompts)))
        layout.append(groups)

    scores = _score_texts(model, tok, pairs, batch_size)
    out = []
    for r, groups in zip(reqs, layout):
        row: dict[str, Any] = {"case_id": r.case_id}
        for key, start, n in groups:
            right = [scores[start + 2 * k] for k in range(n)]
            wrong = [scores[start + 2 * k + 1] for k in range(n)]
            nll_right = [s.nll for s in right]
            nll_wrong = [s.nll for s in wrong]
            # Same comparison and margin as the reference: NLL of the right target below the wrong
            # one's, and exp(-NLL) differences.
            row[f"{key}_success"] = _mean([float(a < b) for a, b in zip(nll_right, nll_wrong)])
            row[f"{key}_prob_diff"] = _mean([math.exp(-a) - math.exp(-b) for a, b in zip(nll_right, nll_wrong)])
            row[f"{key}_argmax_acc"] = _mean([float(s.all_correct) for s in right])
            row[f"{key}_token_acc"] = _mean([float(s.correct.double().mean()) for s in right])
            if key == "neighborhood":
                row["neighborhood_nll_answer"], row["neighborhood_nll_new"] = nll_right, nll_wrong
            else:
                row[f"{key}_nll_new"], row[f"{key}_nll_true"] = nll_right, nll_wrong
        out.append(row)
    return out


# ---------------------------------------------------------------------------------- zsRE
def score_zsre(model, tok, requests: Sequence, batch_size: int = 64) -> list[dict]:
    """zsRE token accuracies of each request (see the module docstring), all prompts in shared
    batches. One dict per request: ``case_id``, ``rewrite_token_acc``, ``paraphrase_token_acc`` and
    ``neighborhood_token_acc`` (fraction of target tokens, over all the request's prompts of that
    kind, that are the argmax; ``None`` without such prompts), the all-tokens variants
    ``{key}_argmax_acc``, and the per-token correctness lists ``{key}_correct`` the reference
    stores."""
    from ..requests import as_requests

    reqs = as_requests(requests) if requests else []
    pairs: list[tuple[str, str]] = []
    layout = []
    for r in reqs:
        groups = []
        answer = r.neighborhood_answer
        for key, prompts, target in (
            ("rewrite", (r.text,), r.target_new),
            ("paraphrase", r.paraphrase_prompts, r.target_new),
            ("neighborhood", r.neighborhood_prompts if answer else (), answer),
        ):
            start = len(pairs)
            pairs += [(p, target) for p in prompts]
            groups.append((key, start, len(prompts)))
        layout.append(groups)

    scores = _score_texts(model, tok, pairs, batch_size)
    out = []
    for r, groups in zip(reqs, layout):
        row: dict[str, Any] = {"case_id": r.case_id}
        for key, start, n in groups:
            got = scores[start : start + n]
            correct = [bool(c) for s in got for c in s.correct]
            row[f"{key}_correct"] = correct
            row[f"{key}_token_acc"] = _mean([float(c) for c in correct])
            row[f"{key}_argmax_acc"] = _mean([float(s.all_correct) for s in got])
        out.append(row)
    return out


# ---------------------------------------------------------------------------------- summaries
def harmonic_mean(values: Iterable[float]) -> float:
    """The harmonic mean; 0 if any value is 0 (as ``scipy.stats.hmean`` gives)."""
    values = list(values)
    if not values:
        raise ValueError("harmonic mean of nothing")
    if any(v < 0 for v in values):
        raise ValueError(f"harmonic mean of negative values {values}")
    if any(v == 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def summarize_scores(rows: Sequence[Mapping[str, Any]]) -> dict[str, float | int | None]:
    """Means over requests of every per-request number in ``rows`` (from :func:`score_counterfact` or
    :func:`score_zsre`; keys whose value is ``None`` for a request skip it), ``n`` (the number of
    requests) and, where rewrite, paraphrase and neighbourhood success are all present, ``score``:
    their harmonic mean. Fractions stay in [0, 1] (the reference's summaries multiply by 100)."""
    sums: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if key == "case_id" or isinstance(value, (list, tuple, str)) or value is None:
                continue
            sums.setdefault(key, []).append(float(value))
    out: dict[str, float | int | None] = {"n": len(rows)}
    out.update({key: _mean(values) for key, values in sums.items()})
    parts = [out.get(f"{k}_success") for k in ("rewrite", "paraphrase", "neighborhood")]
    if all(p is not None for p in parts):
        out["score"] = harmonic_mean(parts)  # type: ignore[arg-type]
    return out


# ---------------------------------------------------------------------------------- generation
@torch.no_grad()
def generate_texts(
    model,
    tok,
    prompts: Sequence[str],
    max_out_len: int = 100,
    max_new_tokens: int | None = None,
    top_k: int = 5,
    seed: int = 0,
    batch_size: int = 32,
    n_gen_per_prompt: int = 1,
) -> list[str]:
    """Continue each prompt, sampling from the top ``top_k`` tokens (``top_k=1``: greedy), batched
    on the model's device with a seeded generator; returns prompt plus continuation as text.

    Lengths as in kmeng01's ``generate_fast``: every text grows to ``max_out_len`` tokens including
    its prompt; ``max_new_tokens`` instead adds exactly that many to each. Generation does not stop
    at end-of-text (neither does the reference); special tokens are dropped from the text (the
    reference removes ``<|endoftext|>``), ``"\\n\\n"`` becomes a space and the text is NFKD-normalised.
    """
    device = _model_device(model)
    cache_kw = _cache_kwarg(model)
    keep = {"logits_to_keep": 1} if "logits_to_keep" in _forward_params(model) else {}
    generator = torch.Generator(device=device).manual_seed(seed)
    pad = _pad_id(tok)
    todo = [p for p in prompts for _ in range(n_gen_per_prompt)]
    texts = []
    for b0 in range(0, len(todo), batch_size):
        encoded = [encode_prompt(tok, p) for p in todo[b0 : b0 + batch_size]]
        n_new = [max_new_tokens if max_new_tokens is not None else max(0, max_out_len - len(e)) for e in encoded]
        steps = max(n_new)
        width = max(len(e) for e in encoded)
        # Left padding, so every row's next token is at the last column.
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, e in enumerate(encoded):
            ids[j, width - len(e) :] = torch.tensor(e)
            mask[j, width - len(e) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        position = (mask.cumsum(1) - 1).clamp(min=0)
        new = torch.empty((len(encoded), steps), dtype=torch.long, device=device)
        cache = None
        for s in range(steps):
            kwargs: dict[str, Any] = {"attention_mask": mask, "position_ids": position, "use_cache": True, **keep}
            if cache is not None:
                kwargs[cache_kw] = cache
            out = model(input_ids=ids, **kwargs)
            cache = _output_cache(out)
            logits = out.logits[:, -1].float()
            if top_k == 1:
                nxt = logits.argmax(-1)
            else:
                top = torch.topk(logits.softmax(-1), top_k, dim=-1)
                pick = torch.multinomial(top.values / top.values.sum(-1, keepdim=True), 1, generator=generator)
                nxt = top.indices.gather(1, pick)[:, 0]
            new[:, s] = nxt
            ids = nxt[:, None]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            position = position[:, -1:] + 1
        new = new.cpu()
        for j, e in enumerate(encoded):
            text = tok.decode(e + new[j, : n_new[j]].tolist(), skip_special_tokens=True)
            texts.append(unicodedata.normalize("NFKD", text).replace("\n\n", " ").replace("<|endoftext|>", ""))
    return texts


def generation_entropy(
    model,
    tok,
    prompts: Sequence[str],
    max_out_len: int = 100,
    max_new_tokens: int | None = None,
    top_k: int = 5,
    seed: int = 0,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Fluency as the reference measures it: generate from each prompt (:func:`generate_texts`) and
    score the texts by n-gram entropy. Returns ``{"ngram_entropy": mean over texts, "entropies":
    per text, "texts": the texts}``."""
    texts = generate_texts(
        model, tok, prompts, max_out_len=max_out_len, max_new_tokens=max_new_tokens, top_k=top_k, seed=seed,
        batch_size=batch_size,
    )
    entropies = [compute_n_gram_entropy(t) for t in texts]
    return {"ngram_entropy": _mean(entropies), "entropies": entropies, "texts": texts}


# Word tokenisation close to nltk.word_tokenize (Penn Treebank conventions) without nltk or its
# punkt data: words (with inner hyphens and apostrophes, numbers with their separators, initialisms
# like U.S.), clitics split off ("ca" "n't", "it" "'s"), double quotes as `` and '', each punctuation
# mark its own token except runs of periods and dashes. Unlike nltk without a sentence splitter,
# every period that ends a word is split off (word_tokenize splits sentences first, so a sentence's
# last period is split there too).
_WORD = re.compile(r"\.\.\.+|--+|(?:[A-Za-z]\.){2,}|\w+(?:(?:[-'’]|[.,](?=\d))\w+)*|[^\w\s]")
_CLITIC = re.compile(r"(?i)^(.+?)(n't|n’t|'s|'re|'ve|'ll|'d|'m|’s|’re|’ve|’ll|’d|’m)$")


def word_tokenize(text: str) -> list[str]:
    """Split ``text`` into words and punctuation, approximating ``nltk.word_tokenize``."""
    tokens = []
    for match in _WORD.finditer(text):
        word = match.group()
        if word == '"':
            # Treebank quotes: `` opens (at the start, after a space or bracket), '' closes.
            before = text[match.start() - 1] if match.start() else " "
            tokens.append("``" if before.isspace() or before in "([{<" else "''")
            continue
        m = _CLITIC.match(word)
        if m:
            tokens += [m.group(1), m.group(2)]
        else:
            tokens.append(word)
    return tokens


def compute_n_gram_entropy(
    text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)
) -> float:
    """The reference's n-gram entropy of one text: for each n, the entropy in bits of the text's
    n-gram frequency distribution, times its weight, averaged over the ns."""
    words = word_tokenize(text)
    total = 0.0
    for n, weight in zip(ns, weights):
        counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        count_sum = sum(counts.values())
        entropy = -sum(c / count_sum * math.log2(c / count_sum) for c in counts.values()) if count_sum else 0.0
        total += weight * entropy
    return total / len(ns)


def n_gram_entropy(texts: Sequence[str]) -> float:
    """Mean :func:`compute_n_gram_entropy` over texts."""
    if not texts:
        raise ValueError("n-gram entropy of no texts")
    return sum(compute_n_gram_entropy(t) for t in texts) / len(texts)
