"""Turning a user's clamp specification into the (features, targets) tensors the steering ops take,
and knowing when they need no check at run time.

The clamp arithmetic itself is csrc/clamp.h (kernels) and ``reference.clamp_terms`` (torch).
"""
from __future__ import annotations

import numbers
from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor

from ._tensors import can_read_values, tensor_version
from .reference import MODES

WHERE = ("always", "active")


class ParsedClamp:
    """A validated clamp: int64 features [C] (distinct, in range) and their targets [C].

    Made by ``SAE.parse_clamp`` (or ``parse_clamp``), it records what it was checked against: the
    features tensor's version counter and d_sae. Steering with it again skips the checks, which on
    a GPU would read the features back (a synchronisation per call, per generated token in a hook).
    Made by hand, or changed in place afterwards, it is checked like any clamp. Edits torch's
    version counter does not see (through ``.data``, ``.numpy()``, or in inference mode) are not
    checked in Python; the kernels still never read a feature outside [0, d_sae): they skip it and
    report it (the CPU backend raises on the report; a GPU skips it without a synchronisation).
    Unpacks as ``features, targets = parsed``.
    """

    __slots__ = ("features", "targets", "_verified")

    def __init__(self, features: Tensor, targets: Tensor):
        self.features = features
        self.targets = targets
        self._verified: Optional[Tuple[int, int]] = None   # (features' version, d_sae) when checked

    def __iter__(self) -> Iterator[Tensor]:
        return iter((self.features, self.targets))

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> Tensor:
        return (self.features, self.targets)[i]

    def __repr__(self) -> str:
        return f"ParsedClamp(features={self.features!r}, targets={self.targets!r})"

    def verified_for(self, d_sae: int) -> bool:
        """True if checked against this d_sae and not changed in place since (as torch can tell)."""
        return self._verified == (tensor_version(self.features), d_sae)

    def to(self, device, dtype) -> "ParsedClamp":
        moved = ParsedClamp(self.features.to(device), self.targets.to(device=device, dtype=dtype))
        if self._verified is not None and self._verified[0] == tensor_version(self.features):
            moved._verified = (tensor_version(moved.features), self._verified[1])   # (a copy: a fresh counter)
        return moved


def _feature_id(f, d_sae: int) -> int:
    if isinstance(f, Tensor):
        if f.numel() != 1 or f.is_floating_point():
            raise TypeError(f"clamp: feature ids must be integers, got a tensor {f}")
        f = f.item()
    if isinstance(f, bool) or not isinstance(f, numbers.Integral):
        raise TypeError(f"clamp: feature ids must be integers, got {f!r}")
    f = int(f)
    if not 0 <= f < d_sae:
        raise ValueError(f"clamp: feature {f} is out of range [0, d_sae={d_sae})")
    return f


def _target(v, f: int, feature_max: Optional[Tensor] = None) -> float:
    if isinstance(v, tuple) and len(v) == 2 and v[0] == "max":
        # ("max", s): s times the feature's maximum activation recorded by sn.feature_stats.
        if feature_max is None:
            raise ValueError(f"clamp: ({v[0]!r}, {v[1]!r}) for feature {f} needs feature statistics: run "
                             "sn.feature_stats(model, site, sae, batches) first (it sets sae.stats), or give a number")
        scale = _target(v[1], f)
        v = scale * float(feature_max[f])
    if isinstance(v, Tensor):
        if v.numel() != 1:
            raise TypeError(f"clamp: the value for feature {f} must be a number, got a tensor of shape {list(v.shape)}")
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"clamp: the value for feature {f} must be a number, got {v!r}")
    v = float(v)
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"clamp: the value for feature {f} must be finite, got {v}")
    return v


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _reads_as_pairs(clamp: tuple) -> bool:
    """Whether a tuple (features, values) also reads as two (feature, value) pairs."""
    return all(not isinstance(t, Tensor) and isinstance(t, (tuple, list)) and len(t) == 2 and _is_int(t[0])
               for t in clamp) and all(_is_int(f) for f in clamp[0])


def parse_clamp(clamp, d_sae: int, dtype: torch.dtype, device, feature_max: Optional[Tensor] = None) -> ParsedClamp:
    """``clamp`` is ``{feature: value}`` or a tuple ``(features, values)`` of tensors or sequences,
    or an already ParsedClamp. A list is refused: ``[(1, 5), (2, 7)]`` could be two (feature, value)
    pairs or features [1, 5] with values [2, 7]; so is a tuple that reads both ways (two integer
    2-sequences, like ``((1, 5), (2, 7))``): give tensors, or a dict. A dict value may be
    ``("max", s)``: s times the feature's recorded maximum (``feature_max``, from sn.feature_stats).

    Returns int64 ``features [C]`` and ``targets [C]`` of ``dtype``. Features must be distinct
    and in ``[0, d_sae)``; values finite. Tensor values keep their autograd history. The result is
    verified (``verified_for(d_sae)``) unless its values could not be read (under torch.compile, on
    meta tensors): then the ops check them at run time.
    """
    if isinstance(clamp, ParsedClamp):
        parsed = clamp.to(device, dtype)
        if parsed.verified_for(d_sae):
            return parsed
        return parse_clamp((parsed.features, parsed.targets), d_sae, dtype, device)   # by hand, or changed
    if isinstance(clamp, dict):
        feats = [_feature_id(f, d_sae) for f in clamp]
        vals = [_target(v, f, feature_max) for f, v in zip(feats, clamp.values())]
        features = torch.tensor(feats, dtype=torch.int64, device=device)
        targets = torch.tensor(vals, dtype=dtype, device=device)
    elif isinstance(clamp, list):
        raise TypeError(f"clamp: expected a dict {{feature: value}} or a tuple (features, values); a list is "
                        f"ambiguous ({clamp!r:.60}: (feature, value) pairs, or [features, values]?)")
    elif isinstance(clamp, tuple) and len(clamp) == 2:
        features, targets = clamp
        if _reads_as_pairs(clamp):
            raise TypeError(f"clamp: {clamp!r} is ambiguous (two (feature, value) pairs, or features "
                            f"{list(features)} with values {list(targets)}?); pass a dict {{feature: value}} or "
                            "tensors (torch.tensor(features), torch.tensor(values))")
        if not isinstance(features, Tensor):
            features = torch.tensor([_feature_id(f, d_sae) for f in features], dtype=torch.int64)
        if not isinstance(targets, Tensor):
            targets = torch.tensor([_target(v, i) for i, v in enumerate(targets)], dtype=dtype)
        if features.is_floating_point() or features.dtype == torch.bool or features.dim() != 1:
            raise TypeError(f"clamp: features must be a 1-D integer tensor, got {features.dtype} {list(features.shape)}")
        if not targets.is_floating_point() or tuple(targets.shape) != tuple(features.shape):
            raise ValueError(f"clamp: values must be a floating tensor of shape {list(features.shape)}, "
                             f"got {targets.dtype} {list(targets.shape)}")
        features = features.to(device=device, dtype=torch.int64)
        targets = targets.to(device=device, dtype=dtype)
        if can_read_values(features) and features.numel():
            lo, hi = int(features.min()), int(features.max())
            if lo < 0 or hi >= d_sae:
                raise ValueError(f"clamp: feature {lo if lo < 0 else hi} is out of range [0, d_sae={d_sae})")
            if not bool(torch.isfinite(targets).all()):
                raise ValueError("clamp: values must be finite")
    else:
        raise TypeError("clamp: expected a dict {feature: value} or a pair (features, values), "
                        f"got {type(clamp).__name__}")
    parsed = ParsedClamp(features, targets)
    if can_read_values(features):
        if features.numel() != torch.unique(features).numel():
            raise ValueError(f"clamp: features must be distinct, got {features.tolist()}")
        parsed._verified = (tensor_version(features), d_sae)
    return parsed


def check_mode(mode, where) -> bool:
    """Validates mode and where; returns only_active."""
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if where not in WHERE:
        raise ValueError(f"where: expected one of {WHERE}, got {where!r}")
    return where == "active"
