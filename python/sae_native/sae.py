"""The SAE module: weights as Parameters, the activation, and encode / decode / steer."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from . import functional as F
from ._packing import PackedEncoder
from ._weights import SAEWeights
from .codes import SparseCodes

WEIGHTS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")


class SAE(nn.Module):
    """A sparse autoencoder in SAELens orientation, as an ``nn.Module``.

    ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``;
    ``activation`` is ``"topk"`` (needs ``k``), ``"jumprelu"`` (needs ``threshold [d_sae]``),
    ``"relu"``, or ``"groupmax"`` (sparsify's: the latents in k equal groups, the largest of each
    kept). With ``apply_b_dec_to_input`` (the default) ``b_dec`` is subtracted from x before
    encoding. ``normalize`` (``"none"``, ``"constant_norm_rescale"``, ``"layer_norm"``, SAELens's
    definitions) normalizes each row of x first and maps reconstructions back; codes then carry
    each row's statistics for decode. Weights may be float32, bfloat16, float16 (widened to float32
    in the kernels) or float64; W_enc and W_dec share a dtype.

    The weights become Parameters sharing the given tensors' storage (no copy), with the
    ``requires_grad`` the tensors had: a loaded SAE is frozen until ``sae.requires_grad_()``, after
    which any torch optimizer fine-tunes it through the ops' autograd. ``state_dict`` keys are
    SAELens's (``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``, ``threshold``). ``.to()``, ``.cuda()``,
    ``.half()`` work in place as on any module. W_enc is also laid out once in the panels the
    CPU kernel streams, re-made when W_enc changes (an optimizer step, ``.to()``); see ``refresh``
    for writes through ``.data``.
    """

    def __init__(self, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, *, activation: str = "topk",
                 k: Optional[int] = None, threshold: Optional[Tensor] = None, apply_b_dec_to_input: bool = True,
                 normalize: str = "none", metadata: Optional[dict] = None):
        super().__init__()
        w = SAEWeights.validated(W_enc, b_enc, W_dec, b_dec, activation=activation, k=k, threshold=threshold,
                                 apply_b_dec_to_input=apply_b_dec_to_input, normalize=normalize)
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError(f"metadata: expected a dict, got {type(metadata).__name__}")
        self._config = dict(activation=activation, k=k, apply_b_dec_to_input=apply_b_dec_to_input,
                            normalize=normalize)
        for name in WEIGHTS:
            t = getattr(w, name)
            # (Parameter of a parameter would share its autograd identity: take the plain tensor)
            data = t.data if isinstance(t, nn.Parameter) else t
            self.register_parameter(name, None if t is None else nn.Parameter(data, requires_grad=t.requires_grad))
        # Where the SAE came from and where it belongs (e.g. "hook_name"), kept by load and save.
        self.metadata = dict(metadata or {})
        # Per-feature statistics (a FeatureStats), set by sn.feature_stats; ("max", s) clamps use it.
        self.stats = None
        self._rebuild()

    def _rebuild(self) -> None:
        """Re-validates the weights (after .to(), load_state_dict, a new Parameter) and re-packs W_enc."""
        self._w = SAEWeights.validated(self.W_enc, self.b_enc, self.W_dec, self.b_dec, threshold=self.threshold,
                                       **self._config)
        self._packed = PackedEncoder(self._w.W_enc)

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name in WEIGHTS and "_w" in self.__dict__:
            self._rebuild()

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self._rebuild()
        if self.stats is not None:
            self.stats = self.stats.to(self.device)
        return out

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._rebuild()   # the copy into the Parameters is an in-place write: W_enc is packed again

    # ---- attributes -----------------------------------------------------------------------
    activation = property(lambda self: self._w.activation)
    k = property(lambda self: self._w.k)
    apply_b_dec_to_input = property(lambda self: self._w.apply_b_dec_to_input)
    normalize = property(lambda self: self._w.normalize)
    d_in = property(lambda self: self._w.d_in)
    d_sae = property(lambda self: self._w.d_sae)
    device = property(lambda self: self._w.device)
    dtype = property(lambda self: self._w.W_enc.dtype)

    # ---- operations -----------------------------------------------------------------------
    def encode(self, x: Tensor, *, nan: str = "compact") -> SparseCodes:
        """Sparse codes of ``x [..., d_in]``: values and indices ``[..., k]`` (see SparseCodes).

        ``nan`` says what a row with a non-finite pre-activation (a NaN or inf token) becomes:
        ``"compact"`` (default) keeps TopK codes as the formula gives them and cuts a JumpReLU/ReLU
        row to its lowest non-finite latent, so one bad token cannot widen the batch's codes to
        d_sae; ``"propagate"`` keeps every active latent, as the dense formula has it;
        ``"raise"`` raises a ValueError naming the first such row."""
        return F.encode_with(self._w, x, self._packed.get(), nan=nan)

    def decode(self, codes) -> Tensor:
        """Reconstruction ``[..., d_in]`` from SparseCodes or a pair (values, indices)."""
        return F.decode_with(self._w, codes)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction ``decode(encode(x))``, in x's dtype and shape."""
        return F.reconstruct_with(self._w, x, self._packed.get())

    def steer(self, x: Tensor, clamp, *, mode: str = "set", keep_error: bool = True, where: str = "always") -> Tensor:
        """Clamped reconstruction: the activation with some features forced to new values.

        ``clamp`` is ``{feature: value}`` or a pair of tensors ``(features, values)``; a value
        ``("max", s)`` means s times the feature's maximum in ``self.stats`` (sn.feature_stats).
        ``mode``: ``"set"`` (z_f := value), ``"scale"`` (z_f := value * z_f) or ``"add"``
        (z_f := z_f + value); ``where="active"`` changes a feature only where it already fires.
        With ``keep_error`` (default) the SAE's reconstruction error is kept:
        ``y = x + sum_f (z'_f - z_f) W_dec[f]``, so an empty clamp returns x; for jumprelu/relu
        SAEs this costs O(|clamp| * d_in) per row. Without it, ``y = decode(z')``.
        """
        return F.steer_with(self._w, x, clamp, mode=mode, keep_error=keep_error, where=where,
                            packed=self._packed.get(), feature_max=self.feature_max)

    @property
    def feature_max(self) -> Optional[Tensor]:
        """Each feature's maximum activation in ``self.stats``, or None before sn.feature_stats."""
        return None if self.stats is None else self.stats.max

    def parse_clamp(self, clamp):
        """Validates a clamp once (see ``steer``) into a ParsedClamp that later steer calls accept
        without checking it again."""
        from ._clamp import parse_clamp
        return parse_clamp(clamp, self.d_sae, self._w.compute_dtype, self.device, self.feature_max)

    def refresh(self) -> None:
        """Re-reads W_enc after it was changed in a way its version counter does not see
        (through ``W_enc.data`` or in inference mode). Other in-place changes are seen anyway."""
        self._packed.refresh()

    def copy(self) -> "SAE":
        """An independent copy (the weights cloned, metadata and stats kept)."""
        w = self._w
        out = SAE(*(t.detach().clone() for t in (w.W_enc, w.b_enc, w.W_dec, w.b_dec)),
                  threshold=None if w.threshold is None else w.threshold.detach().clone(), metadata=self.metadata,
                  **self._config)
        out.stats = self.stats
        return out

    def save(self, path, *, overwrite: bool = False) -> None:
        """Writes the SAE in SAELens format (cfg.json + sae_weights.safetensors) to folder ``path``;
        an existing SAE folder is replaced only with ``overwrite=True``."""
        from .formats import save
        save(self, path, overwrite=overwrite)

    def extra_repr(self) -> str:
        extra = f", k={self.k}" if self.k is not None else ""
        return (f"d_in={self.d_in}, d_sae={self.d_sae}, activation={self.activation!r}{extra}, "
                f"dtype={self.dtype}, device={self.device}")

    def __repr__(self) -> str:
        return f"SAE({self.extra_repr()})"
