"""Few-shot GLUE probes of downstream ability (SST-2, MRPC, CoLA, RTE), cheap enough to run every few
edits of a sequential run.

The prompts and label words are those of the "gradual and catastrophic forgetting" authors
(Gupta et al. 2024, ``scalable-model-editing/unified-model-editing``, ``glue_eval/*_eval.py``)::

    sst2  Review : {sentence}\\nSentiment :                                  " positive" / " negative"
    mrpc  Are the sentences paraphrases of each other.\\nSentence 1: {s1}\\nSentence 2: {s2}\\nAnswer:
                                                                              " Yes" / " No"
    cola  Is this sentence linguistically acceptable?\\nSentence: {sentence}\\nAnswer:   " Yes" / " No"
    rte   {s1}\\nquestion: {s2} True or False?\\nanswer:                       " True" / " False"

each few-shot example being the same text followed by its label word and a newline. As in their
``highest_probability_answer``, an example's prediction is the label whose word has the higher mean
token log-probability after the prompt (teacher-forced; ties go to label 0); their other prediction,
by greedy generation and string matching, is not computed (it costs a generation per example).
Where this differs from their code:

* one template for shots and the evaluated example (their SST-2 query drops the space after
  ``Review :``, their CoLA query ends ``Answer: `` and then scores ``"Answer:  Yes"``); sentences are
  stripped of surrounding whitespace (the SST-2 sentences end in a space);
* RTE's labels follow GLUE (0 entailment → " True", 1 not entailment → " False"); their code maps
  label 1 to "True", the opposite of the data;
* the few-shot examples are drawn from the task's subset with a seeded generator, label-balanced, and
  left out of the evaluated examples (theirs are the first k of the subset's first 10, which for
  MRPC are all paraphrases); ``shot_selection="first"`` gives theirs. Where the prefix and the
  longest example exceed the model's positions, trailing shots are dropped (the reference drops
  them per example) and ``n_shots`` in the result says how many were used;
* accuracy, F1 and MCC all come from the log-probability predictions. ``f1`` is their
  ``f1_score(average="weighted")``; ``f1_macro`` and ``f1_positive`` (label 1: the usual GLUE F1 for
  MRPC) are beside it, and ``mcc`` (the usual CoLA metric) for every task.

Speed: the few-shot prefix runs through the model once per task and its key/value cache is reused
by every batch; label words of one token share a single row per example, so an example costs one
pass over its own tokens (plus attention to the prefix). On SmolLM2-135M with one thread of a
shared 2-core CPU, 50 examples per task with 8 shots take about 50 s for the four tasks, MRPC and
RTE (long examples) 75 % of it; the forward pass over the examples' 11,000 tokens alone takes about
28 s there. Eight shots is the default because fewer leave SmolLM2 near chance on SST-2 (192
examples, seeds 0 and 1: 2 shots 0.71 and 0.61, 4 shots 0.66 and 0.66, 8 shots 0.82 and 0.85).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .datasets import GLUE_TASKS, GlueExample, load_glue
from .metrics import _pad_id, encode_prompt, encode_target, score_continuations

log = logging.getLogger(__name__)

__all__ = [
    "GlueFormat",
    "GLUE_FORMATS",
    "FEW_SHOT_POOL",
    "evaluate_glue",
    "evaluate_glue_task",
    "select_few_shot",
    "accuracy",
    "f1_score",
    "matthews_corrcoef",
]

# The reference's few-shot pool: the first 10 records of each subset (FEW_SHOT_TEST_SPLIT).
FEW_SHOT_POOL = 10


@dataclass(frozen=True)
class GlueFormat:
    """How a task's examples become text: ``template`` (fields ``sentence``, ``sentence2``) ends
    where the answer goes; ``label_words[label]`` is the answer for each label (a leading space is
    added when scored)."""

    template: str
    label_words: tuple[str, str]

    def question(self, example: GlueExample) -> str:
        return self.template.format(
            sentence=example.sentence.strip(), sentence2=(example.sentence2 or "").strip()
        )

    def shot(self, example: GlueExample) -> str:
        return f"{self.question(example)} {self.label_words[example.label]}\n"


GLUE_FORMATS = {
    "sst2": GlueFormat("Review : {sentence}\nSentiment :", ("negative", "positive")),
    "mrpc": GlueFormat(
        "Are the sentences paraphrases of each other.\nSentence 1: {sentence}\nSentence 2: {sentence2}\nAnswer:",
        ("No", "Yes"),
    ),
    "cola": GlueFormat("Is this sentence linguistically acceptable?\nSentence: {sentence}\nAnswer:", ("No", "Yes")),
    "rte": GlueFormat("{sentence}\nquestion: {sentence2} True or False?\nanswer:", ("True", "False")),
}


# ---------------------------------------------------------------------------------- metrics
def accuracy(labels: Sequence[int], predictions: Sequence[int]) -> float:
    _check_lengths(labels, predictions)
    return sum(int(a == b) for a, b in zip(labels, predictions)) / len(labels)


def _check_lengths(labels: Sequence[int], predictions: Sequence[int]) -> None:
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    if not labels:
        raise ValueError("no labels")


def _class_f1(labels: Sequence[int], predictions: Sequence[int], cls: int) -> float:
    tp = sum(1 for a, b in zip(labels, predictions) if a == cls and b == cls)
    fp = sum(1 for a, b in zip(labels, predictions) if a != cls and b == cls)
    fn = sum(1 for a, b in zip(labels, predictions) if a == cls and b != cls)
    # 2tp / (2tp + fp + fn), 0 where undefined (sklearn's zero_division default scores 0 too).
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def f1_score(labels: Sequence[int], predictions: Sequence[int], average: str = "binary", pos_label: int = 1) -> float:
    """F1 as ``sklearn.metrics.f1_score`` computes it: ``"binary"`` for ``pos_label``; ``"macro"``
    the unweighted mean over the classes present in labels or predictions; ``"weighted"`` the mean
    weighted by each class's support in ``labels``."""
    _check_lengths(labels, predictions)
    if average == "binary":
        return _class_f1(labels, predictions, pos_label)
    classes = sorted(set(labels) | set(predictions))
    per_class = {c: _class_f1(labels, predictions, c) for c in classes}
    if average == "macro":
        return sum(per_class.values()) / len(classes)
    if average == "weighted":
        return sum(per_class[c] * sum(1 for a in labels if a == c) for c in classes) / len(labels)
    raise ValueError(f"average must be 'binary', 'macro' or 'weighted', got {average!r}")


def matthews_corrcoef(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """Matthews correlation of binary labels and predictions; 0 where a margin is empty (as
    sklearn)."""
    _check_lengths(labels, predictions)
    tp = sum(1 for a, b in zip(labels, predictions) if a == 1 and b == 1)
    tn = sum(1 for a, b in zip(labels, predictions) if a == 0 and b == 0)
    fp = sum(1 for a, b in zip(labels, predictions) if a == 0 and b == 1)
    fn = sum(1 for a, b in zip(labels, predictions) if a == 1 and b == 0)
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denominator if denominator else 0.0


# ---------------------------------------------------------------------------------- few-shot split
def select_few_shot(
    examples: Sequence[GlueExample], n_shots: int, seed: int = 0, selection: str = "balanced"
) -> tuple[list[GlueExample], list[GlueExample]]:
    """Split ``examples`` into (few-shot examples, evaluated examples).

    ``"balanced"``: ``n_shots`` examples drawn with ``random.Random(seed)``, half of each label (the
    odd one's label drawn too), in a seeded order; every other example is evaluated, in file order.
    ``"first"`` (the reference): the first ``n_shots`` of the first :data:`FEW_SHOT_POOL` examples,
    and everything after the pool is evaluated.
    """
    if n_shots < 0:
        raise ValueError(f"n_shots must be non-negative, got {n_shots}")
    if selection == "first":
        if n_shots > FEW_SHOT_POOL:
            raise ValueError(f"shot_selection 'first' allows at most {FEW_SHOT_POOL} shots, got {n_shots}")
        return list(examples[:n_shots]), list(examples[FEW_SHOT_POOL:])
    if selection != "balanced":
        raise ValueError(f"shot_selection must be 'balanced' or 'first', got {selection!r}")
    rng = random.Random(seed)
    by_label = {label: [i for i, e in enumerate(examples) if e.label == label] for label in (0, 1)}
    wanted = {0: n_shots // 2, 1: n_shots // 2}
    if n_shots % 2:
        wanted[rng.choice((0, 1))] += 1
    chosen = []
    for label in (0, 1):
        if wanted[label] > len(by_label[label]):
            raise ValueError(f"{n_shots} balanced shots need {wanted[label]} examples of label {label}, have {len(by_label[label])}")
        chosen += rng.sample(by_label[label], wanted[label])
    rng.shuffle(chosen)
    taken = set(chosen)
    return [examples[i] for i in chosen], [e for i, e in enumerate(examples) if i not in taken]


# ---------------------------------------------------------------------------------- evaluation
def _max_positions(model) -> int | None:
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def evaluate_glue_task(
    model,
    tok,
    task: str,
    examples: Sequence[GlueExample],
    n_per_task: int | None = None,
    n_shots: int = 8,
    batch_size: int = 16,
    seed: int = 0,
    shot_selection: str = "balanced",
) -> dict[str, Any]:
    """Few-shot accuracy, F1 and MCC of one task on ``examples`` (see :func:`evaluate_glue`)."""
    t0 = time.perf_counter()
    fmt = GLUE_FORMATS[task]
    shots, evaluated = select_few_shot(examples, n_shots, seed, shot_selection)
    if n_per_task is not None:
        evaluated = evaluated[:n_per_task]
    if not evaluated:
        raise ValueError(f"GLUE {task}: no examples left to evaluate after {len(shots)} few-shot examples")
    label_ids = [encode_target(tok, w) for w in fmt.label_words]
    questions = [list(tok(fmt.question(e), add_special_tokens=False)["input_ids"]) for e in evaluated]
    longest_row = max(len(q) for q in questions) + max(len(ids) for ids in label_ids) - 1
    limit = _max_positions(model)
    while True:
        prefix_ids = encode_prompt(tok, "".join(fmt.shot(s) for s in shots))  # BOS first where the tokenizer adds one
        if limit is None or len(prefix_ids) + longest_row <= limit:
            break
        if not shots:
            raise ValueError(f"GLUE {task}: an example of {longest_row} tokens does not fit the model's {limit} positions")
        # As the reference does, keep only the shots that fit the context (one prefix for all examples
        # here, so fitted to the longest).
        log.warning("GLUE %s: %d shots do not fit %d positions; using %d", task, len(shots), limit, len(shots) - 1)
        shots = shots[:-1]
    items = [(q, ids) for q in questions for ids in label_ids]
    scores = score_continuations(model, items, batch_size=batch_size, prefix_ids=prefix_ids, pad_id=_pad_id(tok))
    n_labels = len(label_ids)
    logprobs = [[scores[k * n_labels + c].mean_logprob for c in range(n_labels)] for k in range(len(evaluated))]
    # The label with the highest mean token log-probability; ties go to label 0.
    predictions = [max(range(n_labels), key=lambda c: (lp[c], -c)) for lp in logprobs]
    labels = [e.label for e in evaluated]
    return {
        "accuracy": accuracy(labels, predictions),
        "f1": f1_score(labels, predictions, average="weighted"),
        "f1_macro": f1_score(labels, predictions, average="macro"),
        "f1_positive": f1_score(labels, predictions, average="binary", pos_label=1),
        "mcc": matthews_corrcoef(labels, predictions),
        # Probability mass on the label words (exp of mean token log-prob, summed): a model that
        # stops answering in the task's words shows here before accuracy moves.
        "label_word_prob": sum(sum(math.exp(x) for x in lp) for lp in logprobs) / len(logprobs),
        "n": len(evaluated),
        "n_shots": len(shots),
        "shot_idx": [s.idx for s in shots],
        "idx": [e.idx for e in evaluated],
        "labels": labels,
        "predictions": predictions,
        "label_logprobs": logprobs,
        "time_s": time.perf_counter() - t0,
    }


@torch.no_grad()
def evaluate_glue(
    model,
    tok,
    data_dir: str | Path | None = None,
    tasks: Sequence[str] = GLUE_TASKS,
    n_per_task: int | None = None,
    n_shots: int = 8,
    batch_size: int = 16,
    seed: int = 0,
    shot_selection: str = "balanced",
) -> dict[str, dict[str, Any]]:
    """Few-shot GLUE: for each task, ``n_shots`` labelled examples as a prefix, then each evaluated
    example (the first ``n_per_task`` of the rest, all if ``None``) scored by its label words'
    log-probabilities.

    ``data_dir``: the folder holding ``glue/{task}.json`` or ``{task}.json``, or ``"hub"`` (default
    :func:`~fastedit.eval.datasets.default_data_dir`: the subsets that ship with fastedit). Returns ``{task: {"accuracy", "f1" (weighted,
    as the r-ROME authors report), "f1_macro", "f1_positive", "mcc", "label_word_prob", "n",
    "n_shots", "shot_idx", "idx", "labels", "predictions", "label_logprobs", "time_s"}}``. The same
    arguments give the same examples, shots and (on the same model) the same numbers.
    """
    unknown = [t for t in tasks if t not in GLUE_FORMATS]
    if unknown:
        raise ValueError(f"unknown GLUE tasks {unknown}; choose from {tuple(GLUE_FORMATS)}")
    results = {}
    for task in tasks:
        examples = load_glue(task, data_dir)
        results[task] = evaluate_glue_task(
            model, tok, task, examples, n_per_task=n_per_task, n_shots=n_shots, batch_size=batch_size, seed=seed,
            shot_selection=shot_selection,
        )
        log.info("GLUE %s: accuracy %.3f, mcc %.3f (%d examples, %.1f s)", task, results[task]["accuracy"],
                 results[task]["mcc"], results[task]["n"], results[task]["time_s"])
    return results
