"""The SAE operations on plain tensors, for libraries that keep their own weights.

Weights use the SAELens orientation: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``,
``W_dec [d_sae, d_in]``, ``b_dec [d_in]``, optional ``threshold [d_sae]``. ``x`` may have any
leading dimensions (``[..., d_in]``) and any float dtype: it is computed in float32 (float64 when
the weights are float64); codes come back in that dtype, reconstructions in x's dtype. Every
function here is built from the ``torch.ops.sae_native`` custom ops, so it works under autograd
and ``torch.compile``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from . import _ops
from ._clamp import check_mode, parse_clamp
from ._weights import SAEWeights
from .codes import SparseCodes

__all__ = ["encode", "decode", "reconstruct", "steer"]


# ---- public functions ---------------------------------------------------------------------


def encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, *, activation: str = "topk", k: Optional[int] = None,
           threshold: Optional[Tensor] = None, b_dec: Optional[Tensor] = None) -> SparseCodes:
    """Sparse codes of ``x``; ``b_dec`` (if given) is subtracted from x first."""
    W_enc = _as_tensor("W_enc", W_enc)
    # Encoding needs no decoder: W_enc.t() and a zero b_dec stand in for the validation.
    w = SAEWeights.validated(W_enc, b_enc, W_enc.t(), b_dec if b_dec is not None else b_enc.new_zeros(W_enc.shape[0]),
                             activation=activation, k=k, threshold=threshold,
                             apply_b_dec_to_input=b_dec is not None)
    return encode_with(w, x)


def decode(values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Optional[Tensor] = None) -> Tensor:
    """``b_dec + sum_j values[..., j] * W_dec[indices[..., j]]``; index -1 (padding) is skipped.

    Output dtype: values' dtype (float32 / float64)."""
    values, indices, W_dec = _as_tensor("values", values), _as_tensor("indices", indices), _as_tensor("W_dec", W_dec)
    if W_dec.dim() != 2:
        raise ValueError(f"W_dec: expected shape [d_sae, d_in], got {list(W_dec.shape)}")
    codes = SparseCodes(values, indices, W_dec.shape[0])
    if b_dec is not None:
        b_dec = _as_tensor("b_dec", b_dec)
        if tuple(b_dec.shape) != (W_dec.shape[1],):
            raise ValueError(f"b_dec: expected shape [{W_dec.shape[1]}], got {list(b_dec.shape)}")
    return _decode_codes(codes, W_dec, b_dec)


def reconstruct(x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, *, activation: str = "topk",
                k: Optional[int] = None, threshold: Optional[Tensor] = None,
                apply_b_dec_to_input: bool = True) -> Tensor:
    """``decode(encode(x))``, in x's dtype and shape."""
    w = SAEWeights.validated(W_enc, b_enc, W_dec, b_dec, activation=activation, k=k, threshold=threshold,
                             apply_b_dec_to_input=apply_b_dec_to_input)
    return reconstruct_with(w, x)


def steer(x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, clamp, *, activation: str = "topk",
          k: Optional[int] = None, threshold: Optional[Tensor] = None, apply_b_dec_to_input: bool = True,
          mode: str = "set", keep_error: bool = True, where: str = "always") -> Tensor:
    """Clamped reconstruction (see ``SAE.steer``), in x's dtype and shape."""
    w = SAEWeights.validated(W_enc, b_enc, W_dec, b_dec, activation=activation, k=k, threshold=threshold,
                             apply_b_dec_to_input=apply_b_dec_to_input)
    return steer_with(w, x, clamp, mode=mode, keep_error=keep_error, where=where)


# ---- the same on validated weights (SAE calls these) ----------------------------------------


def encode_with(w: SAEWeights, x: Tensor, packed: Optional[Tensor] = None) -> SparseCodes:
    """Encode with validated weights; ``packed`` is a ``backends.PackedEncoder`` output or None."""
    x2, lead = _flat_input(w, x)
    b_in = w.input_bias
    if w.activation == "topk":
        values, indices = _ops.encode_topk(x2, w.W_enc, w.b_enc, b_in, w.k, packed)
        counts = None
    else:
        values, indices, counts = _ops.encode_threshold(x2, w.W_enc, w.b_enc, b_in, w.threshold, packed)
        counts = counts.reshape(lead)
    width = values.shape[-1]
    return SparseCodes(values.reshape(*lead, width), indices.reshape(*lead, width), w.d_sae, counts)


def decode_with(w: SAEWeights, codes) -> Tensor:
    if isinstance(codes, (tuple, list)) and len(codes) == 2:
        codes = SparseCodes(_as_tensor("values", codes[0]), _as_tensor("indices", codes[1]), w.d_sae)
    if not isinstance(codes, SparseCodes):
        raise TypeError(f"codes: expected SparseCodes or a pair (values, indices), got {type(codes).__name__}")
    if codes.d_sae != w.d_sae:
        raise ValueError(f"codes: expected codes of an SAE with d_sae={w.d_sae}, got d_sae={codes.d_sae}")
    return _decode_codes(codes, w.W_dec, w.b_dec)


def reconstruct_with(w: SAEWeights, x: Tensor, packed: Optional[Tensor] = None) -> Tensor:
    codes = encode_with(w, x, packed)
    return _decode_codes(codes, w.W_dec, w.b_dec).to(x.dtype)


def steer_with(w: SAEWeights, x: Tensor, clamp, *, mode: str = "set", keep_error: bool = True,
               where: str = "always", packed: Optional[Tensor] = None, feature_max: Optional[Tensor] = None) -> Tensor:
    only_active = check_mode(mode, where)
    if not isinstance(keep_error, bool):
        raise TypeError(f"keep_error: expected a bool, got {type(keep_error).__name__}")
    x2, lead = _flat_input(w, x)
    features, targets = parse_clamp(clamp, w.d_sae, x2.dtype, x2.device, feature_max)
    if w.activation != "topk" and keep_error:
        # z_f needs only column f of W_enc: O(|C| * d_in) per row, whatever d_sae is.
        y, _ = _ops.steer_threshold(x2, w.W_enc, w.b_enc, w.W_dec, w.input_bias, w.threshold, features, targets,
                                    mode, only_active)
    else:
        codes = encode_with(w, x2, packed)
        y, _ = _ops.steer_codes(x2, codes.values, codes.indices, w.W_dec, w.b_dec, features, targets, mode,
                                only_active, keep_error)
    return y.reshape(*lead, w.d_in).to(x.dtype)


# ---- helpers ---------------------------------------------------------------------------------


def _as_tensor(name: str, t) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    return t


def _flat_input(w: SAEWeights, x) -> tuple:
    """x [..., d_in] of any float dtype -> ([n, d_in] in the compute dtype, leading shape)."""
    x = _as_tensor("x", x)
    if x.dim() < 1 or x.shape[-1] != w.d_in:
        raise ValueError(f"x: expected shape [..., d_in={w.d_in}], got {list(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor, got {x.dtype}")
    if x.device != w.device:
        raise ValueError(f"x: expected device {w.device} (that of the SAE's weights), got {x.device}")
    lead = tuple(x.shape[:-1])
    return x.reshape(-1, w.d_in).to(w.compute_dtype), lead


def _decode_codes(codes: SparseCodes, W_dec: Tensor, b_dec: Optional[Tensor]) -> Tensor:
    d_sae, d_in = W_dec.shape
    values, indices = codes.values, codes.indices
    if values.device != W_dec.device:
        raise ValueError(f"codes: expected device {W_dec.device} (that of W_dec), got {values.device}")
    if not values.is_floating_point():
        raise TypeError(f"values: expected a floating-point tensor, got {values.dtype}")
    compute = torch.float64 if W_dec.dtype == torch.float64 else torch.float32
    # Index range is checked by the kernel itself (see backends/cpu.py, _indices_ok).
    lead, width = values.shape[:-1], values.shape[-1]
    n = math.prod(lead)  # not reshape(-1, width): ambiguous when width is 0
    out = _ops.decode(values.reshape(n, width).to(compute), indices.reshape(n, width), W_dec, b_dec)
    return out.reshape(*lead, d_in)
