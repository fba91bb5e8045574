"""The SAE operations on plain tensors, for libraries that keep their own weights.

Weights use the SAELens orientation: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``,
``W_dec [d_sae, d_in]``, ``b_dec [d_in]``, optional ``threshold [d_sae]``. ``x`` may have any
leading dimensions (``[..., d_in]``) and any float dtype: it is computed in float32 (float64 when
the weights are float64); codes come back in that dtype, reconstructions in x's dtype. Every
function here is built from the ``torch.ops.sae_native`` custom ops, so it works under autograd
and ``torch.compile``.
"""
from __future__ import annotations

import dataclasses
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
           threshold: Optional[Tensor] = None, b_dec: Optional[Tensor] = None, normalize: str = "none",
           nan: str = "compact") -> SparseCodes:
    """Sparse codes of ``x``; ``b_dec`` (if given) is subtracted from x first (after ``normalize``).
    ``nan``: what a row with non-finite pre-activations becomes (see ``SAE.encode``)."""
    W_enc = _as_tensor("W_enc", W_enc)
    # Encoding needs no decoder: W_enc.t() and a zero b_dec stand in for the validation.
    w = SAEWeights.validated(W_enc, b_enc, W_enc.t(), b_dec if b_dec is not None else b_enc.new_zeros(W_enc.shape[0]),
                             activation=activation, k=k, threshold=threshold,
                             apply_b_dec_to_input=b_dec is not None, normalize=normalize)
    return encode_with(w, x, nan=nan)


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
    return _decode_codes(codes, W_dec, b_dec, check=True)


def reconstruct(x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, *, activation: str = "topk",
                k: Optional[int] = None, threshold: Optional[Tensor] = None,
                apply_b_dec_to_input: bool = True, normalize: str = "none") -> Tensor:
    """``decode(encode(x))``, in x's dtype and shape."""
    w = SAEWeights.validated(W_enc, b_enc, W_dec, b_dec, activation=activation, k=k, threshold=threshold,
                             apply_b_dec_to_input=apply_b_dec_to_input, normalize=normalize)
    return reconstruct_with(w, x)


def steer(x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, clamp, *, activation: str = "topk",
          k: Optional[int] = None, threshold: Optional[Tensor] = None, apply_b_dec_to_input: bool = True,
          normalize: str = "none", mode: str = "set", keep_error: bool = True, where: str = "always") -> Tensor:
    """Clamped reconstruction (see ``SAE.steer``), in x's dtype and shape."""
    w = SAEWeights.validated(W_enc, b_enc, W_dec, b_dec, activation=activation, k=k, threshold=threshold,
                             apply_b_dec_to_input=apply_b_dec_to_input, normalize=normalize)
    return steer_with(w, x, clamp, mode=mode, keep_error=keep_error, where=where)


# ---- the same on validated weights (SAE calls these) ----------------------------------------


NAN_RULES = ("compact", "propagate", "raise")


def encode_with(w: SAEWeights, x: Tensor, packed: Optional[Tensor] = None, nan: str = "compact") -> SparseCodes:
    """Encode with validated weights; ``packed`` is ``pack_encoder(W_enc)`` (a PackedEncoder's) or None."""
    if nan not in NAN_RULES:
        raise ValueError(f"nan: expected one of {NAN_RULES}, got {nan!r}")
    x2, lead = _flat_input(w, x)
    x2, shift, scale = _normalize_input(w, x2)
    b_in = w.input_bias
    counts = None
    if w.activation == "topk":
        values, indices = _ops.encode_topk(x2, w.W_enc, w.b_enc, b_in, w.k, packed)
    elif w.activation == "groupmax":
        values, indices = _ops.encode_groupmax(x2, w.W_enc, w.b_enc, b_in, w.k, packed)
    else:
        values, indices, counts = _ops.encode_threshold(x2, w.W_enc, w.b_enc, b_in, w.threshold, packed,
                                                        nan != "propagate")
        counts = counts.reshape(lead)
    if nan == "raise":
        _raise_on_nonfinite(values, lead)
    width = values.shape[-1]
    stats = None if scale is None else (None if shift is None else shift.reshape(*lead, 1), scale.reshape(*lead, 1))
    return SparseCodes(values.reshape(*lead, width), indices.reshape(*lead, width), w.d_sae, counts,
                       input_norm=stats)


def decode_with(w: SAEWeights, codes, check: bool = True) -> Tensor:
    """``check``: the codes' indices are checked (a user's codes; on a GPU a synchronisation), or
    not (the package's own codes, from an encode just made)."""
    if isinstance(codes, (tuple, list)) and len(codes) == 2:
        codes = SparseCodes(_as_tensor("values", codes[0]), _as_tensor("indices", codes[1]), w.d_sae)
    if not isinstance(codes, SparseCodes):
        raise TypeError(f"codes: expected SparseCodes or a pair (values, indices), got {type(codes).__name__}")
    if codes.d_sae != w.d_sae:
        raise ValueError(f"codes: expected codes of an SAE with d_sae={w.d_sae}, got d_sae={codes.d_sae}")
    out = _decode_codes(codes, w.W_dec, w.b_dec, check)
    if w.normalize == "none":
        return out
    if codes.input_norm is None:
        raise ValueError(f"codes: this SAE normalizes its input ({w.normalize}), so decoding needs each row's "
                         "statistics, which only codes from its own encode carry")
    shift, scale = codes.input_norm
    return _denormalize(out, shift, scale)


def reconstruct_with(w: SAEWeights, x: Tensor, packed: Optional[Tensor] = None) -> Tensor:
    codes = encode_with(w, x, packed)
    return decode_with(w, codes, check=False).to(x.dtype)   # the encode's own codes: no check, no GPU read-back


def steer_with(w: SAEWeights, x: Tensor, clamp, *, mode: str = "set", keep_error: bool = True,
               where: str = "always", packed: Optional[Tensor] = None, feature_max: Optional[Tensor] = None) -> Tensor:
    only_active = check_mode(mode, where)
    if not isinstance(keep_error, bool):
        raise TypeError(f"keep_error: expected a bool, got {type(keep_error).__name__}")
    x2, lead = _flat_input(w, x)
    parsed = parse_clamp(clamp, w.d_sae, x2.dtype, x2.device, feature_max)
    features, targets = parsed
    # A clamp parse_clamp verified needs no check in the op (on a GPU, reading the features back
    # would synchronise every call); the kernels skip an out-of-range feature either way.
    check = not parsed.verified_for(w.d_sae)
    xn, shift, scale = _normalize_input(w, x2)
    if w.activation in ("jumprelu", "relu") and keep_error:
        # z_f needs only column f of W_enc: O(|C| * d_in) per row, whatever d_sae is.
        y, _ = _ops.steer_threshold(xn, w.W_enc, w.b_enc, w.W_dec, w.input_bias, w.threshold, features, targets,
                                    mode, only_active, check)
    else:
        codes = encode_with(w, xn, packed) if scale is None else \
            encode_with(dataclasses.replace(w, normalize="none"), xn, packed)
        y, _ = _ops.steer_codes(xn, codes.values, codes.indices, w.W_dec, w.b_dec, features, targets, mode,
                                only_active, keep_error, check)
    if scale is not None:
        # Back to the input's space: the change is scaled; without keep_error the shift comes back.
        y = x2 + (y - xn) * scale if keep_error else _denormalize(y, shift, scale)
    return y.reshape(*lead, w.d_in).to(x.dtype)


def _raise_on_nonfinite(values: Tensor, lead: tuple) -> None:
    """nan="raise": a row whose codes hold a non-finite value is an error naming the row."""
    bad = (~torch.isfinite(values)).any(-1)
    if bool(bad.any()):  # reads back (on a GPU, a synchronisation): only when asked for
        flat = int(bad.nonzero()[0, 0])
        where = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), lead)) if lead else ()
        raise ValueError(f"x: row {list(where)} (of leading shape {list(lead)}) gives non-finite pre-activations "
                         f"(a NaN or inf in x, or overflow); {int(bad.sum())} such rows. Use nan='compact' or "
                         "'propagate' to encode them anyway")


def _normalize_input(w: SAEWeights, x2: Tensor):
    """(x normalized, shift or None, scale or None) per the SAE's input normalization (SAELens's
    definitions): constant_norm_rescale scales each row to norm sqrt(d_in) and decode divides it
    back; layer_norm makes each row (x - mean) / (std + 1e-5) and decode maps y to y * std + mean
    (std unbiased, as SAELens and OpenAI's sparse_autoencoder compute it)."""
    if w.normalize == "none":
        return x2, None, None
    if w.normalize == "constant_norm_rescale":
        coeff = w.d_in ** 0.5 / x2.norm(dim=-1, keepdim=True)
        return x2 * coeff, None, 1.0 / coeff
    mean = x2.mean(dim=-1, keepdim=True)
    centred = x2 - mean
    std = centred.std(dim=-1, keepdim=True)
    return centred / (std + 1e-5), mean, std


def _denormalize(y: Tensor, shift: Optional[Tensor], scale: Tensor) -> Tensor:
    y = y * scale.to(y.dtype)
    return y if shift is None else y + shift.to(y.dtype)


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


def _decode_codes(codes: SparseCodes, W_dec: Tensor, b_dec: Optional[Tensor], check: bool) -> Tensor:
    d_sae, d_in = W_dec.shape
    values, indices = codes.values, codes.indices
    if values.device != W_dec.device:
        raise ValueError(f"codes: expected device {W_dec.device} (that of W_dec), got {values.device}")
    if not values.is_floating_point():
        raise TypeError(f"values: expected a floating-point tensor, got {values.dtype}")
    compute = torch.float64 if W_dec.dtype == torch.float64 else torch.float32
    # Index range: the kernels skip and count out-of-range indices (backends/contract.py).
    lead, width = values.shape[:-1], values.shape[-1]
    n = math.prod(lead)  # not reshape(-1, width): ambiguous when width is 0
    out = _ops.decode(values.reshape(n, width).to(compute), indices.reshape(n, width), W_dec, b_dec, check)
    return out.reshape(*lead, d_in)
