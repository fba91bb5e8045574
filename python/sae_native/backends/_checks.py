"""The op contract every backend checks before handing raw pointers to native code.

These guard memory safety for anyone calling ``torch.ops.sae_native.*`` directly; the public API
(``functional.py``) has already given friendlier errors for user input. One ``OpChecks`` per
device type: the rules are the same, only the device differs.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._dtypes import PAIRS

MODES = {"set": 0, "scale": 1, "add": 2}


def fail(op: str, msg: str) -> ValueError:
    return ValueError(f"sae_native::{op}: {msg}")


def indices_reported(op: str, count: int, example: int, rows: int) -> None:
    """Raises for what a kernel reported of indices outside [-1, rows): how many, and one of them."""
    if count:
        raise ValueError(f"sae_native::{op}: indices: expected latents in [0, d_sae={rows}) or -1 for padding, "
                         f"got {example} ({count} out of range)")


def features_reported(op: str, count: int, example: int, d_sae: int) -> None:
    """Raises for what a steering kernel reported of clamp features outside [0, d_sae)."""
    if count:
        raise ValueError(f"sae_native::{op}: features must lie in [0, {d_sae}) (d_sae), got {example} "
                         f"({count} out of range)")


def topk_k(op: str, k: int, d_sae: int) -> None:
    if not 1 <= k <= d_sae:
        raise fail(op, f"k must be in [1, d_sae={d_sae}], got {k}")


def groupmax_k(op: str, k: int, d_sae: int) -> None:
    if k < 1 or d_sae % k:
        raise fail(op, f"k must divide d_sae={d_sae} (k groups of d_sae / k latents), got {k}")


class OpChecks:
    def __init__(self, device_type: str, label: str):
        self.device_type = device_type   # "cpu" / "cuda"
        self.label = label               # how messages name it: "CPU" / "CUDA"

    def _on_device(self, op: str, name: str, t: Tensor) -> None:
        if t.device.type != self.device_type:
            raise fail(op, f"{name} must be on the {self.label} device, got {t.device}")

    def same_device(self, op: str, ref: Tensor, **tensors: Optional[Tensor]) -> None:
        """Every given tensor on ref's device (one GPU: kernels read only their own device's memory)."""
        for name, t in tensors.items():
            if t is not None and t.device != ref.device:
                raise fail(op, f"{name} must be on {ref.device} like the activations, got {t.device}")

    def acts(self, op: str, name: str, t: Tensor, cols: Optional[int] = None) -> Tensor:
        """A 2-D float32/float64 activation matrix on this device, made contiguous."""
        self._on_device(op, name, t)
        if t.dtype not in PAIRS:
            raise fail(op, f"{name} must be float32 or float64, got {t.dtype}")
        if t.dim() != 2 or (cols is not None and t.shape[1] != cols):
            want = f"[n, {cols}]" if cols is not None else "2-D"
            raise fail(op, f"{name} must be {want}, got shape {list(t.shape)}")
        return t.contiguous()

    def weights(self, op: str, name: str, W: Tensor, T: torch.dtype, shape) -> None:
        self._on_device(op, name, W)
        if W.dtype not in PAIRS[T]:
            raise fail(op, f"{name} must be one of {[str(d) for d in PAIRS[T]]} with {T} activations, got {W.dtype}")
        if tuple(W.shape) != tuple(shape):
            raise fail(op, f"{name} must have shape {list(shape)}, got {list(W.shape)}")

    def vector(self, op: str, name: str, v: Optional[Tensor], n: int, T: torch.dtype) -> Optional[Tensor]:
        """An optional [n] vector as a contiguous T tensor (biases and thresholds are small)."""
        if v is None:
            return None
        if v.device.type != self.device_type or not v.is_floating_point() or tuple(v.shape) != (n,):
            raise fail(op, f"{name} must be a floating {self.label} tensor of shape [{n}], "
                           f"got {v.dtype} {list(v.shape)} on {v.device}")
        return v.to(T).contiguous()

    def codes(self, op: str, values: Tensor, indices: Tensor) -> tuple:
        values = self.acts(op, "values", values)
        if (indices.dtype != torch.int64 or tuple(indices.shape) != tuple(values.shape)
                or indices.device.type != self.device_type):
            raise fail(op, f"indices must be an int64 {self.label} tensor shaped like values {list(values.shape)}, "
                           f"got {indices.dtype} {list(indices.shape)} on {indices.device}")
        return values, indices.contiguous()

    def clamp(self, op: str, features: Tensor, targets: Tensor, d_sae: int, T: torch.dtype, mode: str):
        if mode not in MODES:
            raise fail(op, f"mode must be one of {list(MODES)}, got {mode!r}")
        if features.dtype != torch.int64 or features.dim() != 1:
            raise fail(op, f"features must be a 1-D int64 tensor, got {features.dtype} {list(features.shape)}")
        if tuple(targets.shape) != tuple(features.shape):
            raise fail(op, f"targets must have shape {list(features.shape)}, got {list(targets.shape)}")
        # The range is checked by the kernels themselves: a feature outside [0, d_sae) is skipped,
        # never read, and reported (raised from the report).
        return features.contiguous(), targets.to(T).contiguous(), MODES[mode]

    def encode_prologue(self, op, x, W_enc, b_enc, b_dec):
        """(x, T, d_in, d_sae, b_enc, b_dec) checked, biases as contiguous T vectors."""
        if W_enc.dim() != 2:
            raise fail(op, f"W_enc must be [d_in, d_sae], got shape {list(W_enc.shape)}")
        d_in, d_sae = W_enc.shape
        x = self.acts(op, "x", x, d_in)
        T = x.dtype
        self.weights(op, "W_enc", W_enc, T, (d_in, d_sae))
        b_enc = self.vector(op, "b_enc", b_enc, d_sae, T)
        if b_enc is None:
            raise fail(op, "b_enc is required")
        b_dec = self.vector(op, "b_dec", b_dec, d_in, T)
        self.same_device(op, x, W_enc=W_enc, b_enc=b_enc, b_dec=b_dec)
        return x, T, d_in, d_sae, b_enc, b_dec

    def decode_weights(self, op, values, indices, W_dec, b_dec):
        """(values, indices, T, d_sae, d_in, b_dec) checked."""
        values, indices = self.codes(op, values, indices)
        T = values.dtype
        if W_dec.dim() != 2:
            raise fail(op, f"W_dec must be [d_sae, d_in], got shape {list(W_dec.shape)}")
        d_sae, d_in = W_dec.shape
        self.weights(op, "W_dec", W_dec, T, (d_sae, d_in))
        b_dec = self.vector(op, "b_dec", b_dec, d_in, T)
        self.same_device(op, values, indices=indices, W_dec=W_dec, b_dec=b_dec)
        return values, indices, T, d_sae, d_in, b_dec

    def steer_weights(self, op, x, W_enc, W_dec):
        if W_dec.dim() != 2:
            raise fail(op, f"W_dec must be [d_sae, d_in], got shape {list(W_dec.shape)}")
        d_sae, d_in = W_dec.shape
        x = self.acts(op, "x", x, d_in)
        self.weights(op, "W_dec", W_dec, x.dtype, (d_sae, d_in))
        if W_enc is not None:
            self.weights(op, "W_enc", W_enc, x.dtype, (d_in, d_sae))
            if W_enc.dtype != W_dec.dtype:
                raise fail(op, f"W_enc and W_dec must share a dtype, got {W_enc.dtype} and {W_dec.dtype}")
        self.same_device(op, x, W_enc=W_enc, W_dec=W_dec)
        return x, x.dtype, d_in, d_sae

    def steer_threshold_inputs(self, op, x, W_enc, b_enc, W_dec, b_dec, threshold, features, targets, mode):
        """(x, T, d_in, d_sae, b_enc, b_dec, threshold, features, targets, mode code) checked."""
        x, T, d_in, d_sae = self.steer_weights(op, x, W_enc, W_dec)
        b_enc = self.vector(op, "b_enc", b_enc, d_sae, T)
        b_dec = self.vector(op, "b_dec", b_dec, d_in, T)
        threshold = self.vector(op, "threshold", threshold, d_sae, T)
        features, targets, mode_code = self.clamp(op, features, targets, d_sae, T, mode)
        self.same_device(op, x, b_enc=b_enc, b_dec=b_dec, threshold=threshold, features=features, targets=targets)
        return x, T, d_in, d_sae, b_enc, b_dec, threshold, features, targets, mode_code

    def steer_codes_inputs(self, op, x, values, indices, W_dec, b_dec, features, targets, mode):
        """(x, T, d_in, d_sae, values, indices, b_dec, features, targets, mode code) checked."""
        x, T, d_in, d_sae = self.steer_weights(op, x, None, W_dec)
        values, indices = self.codes(op, values, indices)
        if values.dtype != T or values.shape[0] != x.shape[0]:
            raise fail(op, f"values must be {T} with {x.shape[0]} rows, got {values.dtype} {list(values.shape)}")
        b_dec = self.vector(op, "b_dec", b_dec, d_in, T)
        features, targets, mode_code = self.clamp(op, features, targets, d_sae, T, mode)
        self.same_device(op, x, values=values, indices=indices, b_dec=b_dec, features=features, targets=targets)
        return x, T, d_in, d_sae, values, indices, b_dec, features, targets, mode_code

    def sparse_dot_inputs(self, op, g, indices, W):
        if W.dim() != 2:
            raise fail(op, f"W must be 2-D, got shape {list(W.shape)}")
        rows, d = W.shape
        g = self.acts(op, "g", g, d)
        T = g.dtype
        self.weights(op, "W", W, T, (rows, d))
        if indices.dtype != torch.int64 or indices.dim() != 2 or indices.shape[0] != g.shape[0]:
            raise fail(op, f"indices must be int64 [{g.shape[0]}, k], got {indices.dtype} {list(indices.shape)}")
        self.same_device(op, g, indices=indices, W=W)
        return g, indices.contiguous(), T, rows, d

    def sparse_outer_inputs(self, op, values, indices, g, rows):
        values, indices = self.codes(op, values, indices)
        T = values.dtype
        g = self.acts(op, "g", g)
        if g.dtype != T or g.shape[0] != values.shape[0]:
            raise fail(op, f"g must be {T} [{values.shape[0]}, d], got {g.dtype} {list(g.shape)}")
        if rows < 0:
            raise fail(op, f"rows must be >= 0, got {rows}")
        self.same_device(op, values, indices=indices, g=g)
        return values, indices, g, T
