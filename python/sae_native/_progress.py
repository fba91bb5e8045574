"""Progress bars: tqdm's when it is installed and the caller asked for one, else nothing."""
from __future__ import annotations

from typing import Iterable


def bar(enabled: bool, **kwargs):
    """A ``tqdm`` bar with ``kwargs``, or None when ``enabled`` is false or tqdm is missing."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(**kwargs)


def wrap(iterable: Iterable, enabled: bool, **kwargs) -> Iterable:
    """``iterable`` behind a tqdm bar when ``enabled`` and tqdm is installed, else unchanged."""
    b = bar(enabled, iterable=iterable, **kwargs)
    return iterable if b is None else b
