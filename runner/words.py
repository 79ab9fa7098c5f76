"""Small helpers for messages in plain words."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


def close_match(word: Any, options: Iterable[str]) -> str | None:
    """The option ``word`` most likely meant: same letters in another case, else a near spelling."""
    if not isinstance(word, str):
        return None
    options = list(options)
    lowered = {o.lower(): o for o in options}
    return lowered.get(word.lower()) or next(
        iter(difflib.get_close_matches(word, options, n=1, cutoff=0.6)), None
    )


def did_you_mean(word: Any, options: Iterable[str]) -> str:
    """``"; did you mean 'X'?"`` for a near option, else ``""``: the one suggestion of shardspec."""
    match = close_match(word, options)
    return f"; did you mean '{match}'?" if match else ""
