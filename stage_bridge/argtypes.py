"""Command-line number types: a wrong value becomes argparse's one-line usage error, never a
traceback, and the message says what is allowed."""

from __future__ import annotations

import argparse
import math
from typing import Callable


def whole_number(minimum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"'{text}' must be at least {minimum}")
        return value
    return parse


def real(minimum: float | None = None, maximum: float | None = None) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"'{text}' is not a finite number")
        if minimum is not None and value < minimum or maximum is not None and value > maximum:
            bounds = f"between {minimum} and {maximum}" if minimum is not None and maximum is not None else \
                f"at least {minimum}" if minimum is not None else f"at most {maximum}"
            raise argparse.ArgumentTypeError(f"'{text}' must be {bounds}")
        return value
    return parse
