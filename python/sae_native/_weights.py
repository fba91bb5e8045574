"""SAEWeights: an SAE's tensors and activation, validated once, shared by SAE and functional."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ._dtypes import WEIGHT_DTYPES, compute_dtype
from ._tensors import can_read_values

ACTIVATIONS = ("topk", "jumprelu", "relu", "groupmax")
NORMALIZATIONS = ("none", "constant_norm_rescale", "layer_norm")


def _tensor(name: str, t) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    return t


def _check_shape(name: str, t: Tensor, shape) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {list(shape)}, got {list(t.shape)}")


def _check_float(name: str, t: Tensor) -> None:
    if t.dtype not in WEIGHT_DTYPES:
        raise TypeError(f"{name}: expected float32, bfloat16, float16 or float64, got {t.dtype}")


@dataclass(frozen=True)
class SAEWeights:
    W_enc: Tensor
    b_enc: Tensor
    W_dec: Tensor
    b_dec: Tensor
    activation: str
    k: Optional[int]
    threshold: Optional[Tensor]
    apply_b_dec_to_input: bool
    normalize: str = "none"

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def compute_dtype(self) -> torch.dtype:
        """float64 for float64 weights, else float32 (16-bit weights are widened in registers)."""
        return compute_dtype(self.W_enc.dtype)

    @property
    def input_bias(self) -> Optional[Tensor]:
        """The bias subtracted from x before encoding, or None."""
        return self.b_dec if self.apply_b_dec_to_input else None

    @classmethod
    def validated(cls, W_enc, b_enc, W_dec, b_dec, *, activation="topk", k=None, threshold=None,
                  apply_b_dec_to_input=True, normalize="none") -> "SAEWeights":
        W_enc = _tensor("W_enc", W_enc)
        if W_enc.dim() != 2:
            raise ValueError(f"W_enc: expected shape [d_in, d_sae], got {list(W_enc.shape)}")
        d_in, d_sae = W_enc.shape
        if d_in < 1 or d_sae < 1:
            raise ValueError(f"W_enc: expected d_in >= 1 and d_sae >= 1, got shape {list(W_enc.shape)}")
        b_enc, W_dec, b_dec = _tensor("b_enc", b_enc), _tensor("W_dec", W_dec), _tensor("b_dec", b_dec)
        if d_in != d_sae and tuple(b_enc.shape) == (d_in,) and tuple(b_dec.shape) == (d_sae,):
            raise ValueError(f"W_enc: got shape {list(W_enc.shape)}, which looks transposed: b_enc has "
                             f"{d_in} entries and b_dec {d_sae}, so d_sae={d_in} and d_in={d_sae}. sae-native "
                             f"takes SAELens's orientation, W_enc [d_in, d_sae]: pass W_enc.T")
        _check_shape("b_enc", b_enc, (d_sae,))
        _check_shape("W_dec", W_dec, (d_sae, d_in))
        _check_shape("b_dec", b_dec, (d_in,))
        named = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}

        if not isinstance(activation, str) or activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
        if activation in ("topk", "groupmax"):
            if k is None or isinstance(k, bool) or not isinstance(k, int):
                raise TypeError(f"k: expected an int in [1, d_sae={d_sae}] for a {activation} SAE, got {k!r}")
            if not 1 <= k <= d_sae:
                raise ValueError(f"k: expected an int in [1, d_sae={d_sae}], got {k}")
            if activation == "groupmax" and d_sae % k:
                raise ValueError(f"k: a groupmax SAE splits d_sae={d_sae} into k equal groups; {k} does not divide it")
        elif k is not None:
            raise ValueError(f"k: only topk and groupmax SAEs take k; got k={k!r} with activation={activation!r}")
        if activation == "jumprelu":
            if threshold is None:
                raise ValueError("threshold: a jumprelu SAE needs a threshold tensor of shape [d_sae]")
            threshold = _tensor("threshold", threshold)
            _check_shape("threshold", threshold, (d_sae,))
            named["threshold"] = threshold
        elif threshold is not None:
            raise ValueError(f"threshold: only jumprelu SAEs take a threshold (activation={activation!r})")
        if not isinstance(apply_b_dec_to_input, bool):
            raise TypeError(f"apply_b_dec_to_input: expected a bool, got {type(apply_b_dec_to_input).__name__}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize: expected one of {NORMALIZATIONS}, got {normalize!r}")

        for name, t in named.items():
            _check_float(name, t)
            if t.device != W_enc.device:
                raise ValueError(f"{name}: expected device {W_enc.device} (that of W_enc), got {t.device}")
        if W_dec.dtype != W_enc.dtype:
            raise TypeError(f"W_dec: expected the dtype of W_enc ({W_enc.dtype}), got {W_dec.dtype}")
        if threshold is not None and can_read_values(threshold) and not bool(torch.isfinite(threshold).all()):
            bad = int((~torch.isfinite(threshold)).nonzero()[0, 0])
            raise ValueError(f"threshold: expected finite values, got {threshold[bad].item()} at latent {bad}")
        return cls(W_enc, b_enc, W_dec, b_dec, activation, k, threshold, apply_b_dec_to_input, normalize)

    def to(self, device=None, dtype=None) -> "SAEWeights":
        def move(t):
            return None if t is None else t.to(device=device, dtype=dtype)
        return SAEWeights.validated(move(self.W_enc), move(self.b_enc), move(self.W_dec), move(self.b_dec),
                                    activation=self.activation, k=self.k, threshold=move(self.threshold),
                                    apply_b_dec_to_input=self.apply_b_dec_to_input, normalize=self.normalize)
