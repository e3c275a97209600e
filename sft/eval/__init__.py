"""Evaluation: verifiable instruction-following (IFEval-style) and exact-answer suites, with scoring.

Generation is not done here; score model responses with `score_ifeval`, `score_exact` or `score_rouge`,
put a base and a tuned run side by side with `compare`, and render either with `to_markdown`.
"""

from __future__ import annotations

from ..errors import CheckerError, SuiteError
from .answers import is_correct, normalise
from .constraints import CHECKERS, check
from .rouge import rouge_l
from .suite import compare, load_suite, score_exact, score_ifeval, score_rouge, to_markdown

__all__ = [
    "CHECKERS",
    "CheckerError",
    "SuiteError",
    "check",
    "compare",
    "is_correct",
    "load_suite",
    "normalise",
    "rouge_l",
    "score_exact",
    "score_ifeval",
    "score_rouge",
    "to_markdown",
]
