"""Evaluation: datasets (CounterFact, zsRE, GLUE subsets), edit metrics and downstream probes."""

from .datasets import DatasetError, default_data_dir, load_counterfact, load_glue, load_zsre
from .downstream import evaluate_glue
from .metrics import (
    compare_targets,
    generation_entropy,
    score_counterfact,
    score_zsre,
    summarize_scores,
    target_logprobs,
)

__all__ = [
    "DatasetError",
    "compare_targets",
    "default_data_dir",
    "evaluate_glue",
    "generation_entropy",
    "load_counterfact",
    "load_glue",
    "load_zsre",
    "score_counterfact",
    "score_zsre",
    "summarize_scores",
    "target_logprobs",
]
