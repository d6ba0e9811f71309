"""Argument types for the command line that check ranges in the parser, so a bad number is a usage
error (exit code 2) that names the option, not a failure later in the run."""

from __future__ import annotations

import argparse
import math

__all__ = ["int_at_least", "positive_float", "layer_list", "tokens_or_auto"]


def int_at_least(lo: int):
    """An integer >= ``lo``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {value}")
        return value

    parse.__name__ = f"integer >= {lo}"
    return parse


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def layer_list(text: str) -> tuple[int, ...]:
    """Comma-separated layer numbers >= 0: ``4,5,6``."""
    try:
        layers = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer numbers, got {text!r}") from None
    if not layers or min(layers) < 0:
        raise argparse.ArgumentTypeError(f"layer numbers must be >= 0, got {text!r}")
    return layers


def tokens_or_auto(text: str) -> int | str:
    """A token count >= 0 (``1e6`` accepted) or ``auto``."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of tokens or 'auto', got {text!r}") from None
    if not math.isfinite(value) or value < 0 or value != int(value):
        raise argparse.ArgumentTypeError(f"expected a whole number of tokens >= 0 or 'auto', got {text!r}")
    return int(value)
