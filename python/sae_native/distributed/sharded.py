"""ShardedSAE: an SAE whose latents are split into contiguous ranges over the ranks of a group.

Each rank holds its slices of W_enc, b_enc, W_dec and threshold, and a replica of b_dec, as an
ordinary sn.SAE over its range (so the local encode is the fused kernel). Every rank passes the
same ``x`` (SPMD) and gets the same global result:

- encode: the local codes, exchanged as (sort key, value, global index) triples [N, k] per rank
  in one all_gather (threshold SAEs: only the active entries, padded to the widest rank), merged
  exactly (merge.py). Communication is O(N x k x world), never O(N x d_sae).
- decode: each rank decodes the codes in its range; one all_reduce sums them.
- steer: each clamped feature's change is added by the rank that owns it; one all_reduce.
"""
from __future__ import annotations

import math
import struct
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import _ops
from .._clamp import check_mode, parse_clamp
from ..codes import SparseCodes
from ..functional import NAN_RULES, _raise_on_nonfinite
from ..reference import clamp_terms
from ..sae import SAE
from . import _comm, checkpoint, merge
from .ranges import ACTIVATIONS, check_shardable, ranges_from_sizes

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _fingerprint(t: Tensor) -> int:
    """An int64 summary of a tensor's contents (equal tensors give equal numbers)."""
    return struct.unpack("<q", struct.pack("<d", float(t.detach().double().sum())))[0]


class ShardedSAE:
    """This rank's part of an SAE sharded over ``group`` (see the module docstring). Built by
    sn.distributed.shard or sn.distributed.load_shard, not directly."""

    def __init__(self, local: SAE, b_dec: Tensor, d_sae: int, ranges: List[Tuple[int, int]], group, *,
                 k: Optional[int], metadata: Optional[dict] = None):
        self._local, self._group = local, group
        self.b_dec = b_dec
        self.d_in, self.d_sae, self.k = local.d_in, int(d_sae), k
        self.ranges = list(ranges)
        self.rank, self.world_size = torch.distributed.get_rank(group), torch.distributed.get_world_size(group)
        self.shard_range = self.ranges[self.rank]
        self.activation = local.activation
        self.apply_b_dec_to_input = local.apply_b_dec_to_input
        self.metadata = dict(metadata or {})
        self.stats = None          # a global FeatureStats, for ("max", s) clamps

    # ---- views ---------------------------------------------------------------------------
    @property
    def local(self) -> SAE:
        """This rank's latents as an ordinary SAE (local latent indices)."""
        return self._local

    @property
    def dtype(self) -> torch.dtype:
        return self._local.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self._local.W_enc.device

    def __repr__(self) -> str:
        return (f"ShardedSAE(d_in={self.d_in}, d_sae={self.d_sae}, activation={self.activation!r}"
                f"{f', k={self.k}' if self.k is not None else ''}, rank {self.rank} of {self.world_size} holds "
                f"latents [{self.shard_range[0]}, {self.shard_range[1]}))")

    # ---- encode ----------------------------------------------------------------------------
    def _check_input(self, x, what: str) -> Tuple[Tensor, tuple]:
        if not isinstance(x, Tensor):
            raise TypeError(f"x: expected a tensor [..., {self.d_in}], got {type(x).__name__}")
        _comm.agree(what, ("x rows", "x width", "x dtype"),
                    (math.prod(x.shape[:-1]) if x.dim() else -1, x.shape[-1] if x.dim() else -1,
                     DTYPES.index(x.dtype) if x.dtype in DTYPES else -1), self._group)
        if x.dim() < 1 or x.shape[-1] != self.d_in:
            raise ValueError(f"x: expected shape [..., {self.d_in}], got {list(x.shape)}")
        if x.dtype not in DTYPES:
            raise TypeError(f"x: expected a floating dtype {', '.join(str(d) for d in DTYPES)}, got {x.dtype}")
        if x.device != self.device:
            raise ValueError(f"x: expected a tensor on {self.device} (where this rank's shard lives), got {x.device}")
        return x.reshape(-1, self.d_in), tuple(x.shape[:-1])

    def encode(self, x: Tensor, *, nan: str = "compact") -> SparseCodes:
        """Codes of ``x [..., d_in]`` with global latent indices, the same on every rank and
        bit-identical to the unsharded SAE's. Every rank must pass the same x."""
        if nan not in NAN_RULES:
            raise ValueError(f"nan: expected one of {NAN_RULES}, got {nan!r}")
        x2, lead = self._check_input(x, "encode")
        start = self.shard_range[0]
        if self.activation == "topk":
            values, indices = self._encode_topk(x2, start)
            counts = None
        else:
            codes = self._local.encode(x2, nan="propagate" if nan == "propagate" else "compact")
            width = int(codes.values.shape[-1])
            widest = max(int(w) for w in _comm.all_gather(torch.tensor([width]), "the codes' widths", self._group))
            pad = widest - width
            v = torch.nn.functional.pad(codes.values, (0, pad))
            i = torch.nn.functional.pad(torch.where(codes.indices >= 0, codes.indices + start, codes.indices),
                                        (0, pad), value=-1)
            parts = _comm.all_gather(torch.stack([v.double(), i.double()]), "the active latents (encode)", self._group)
            values, indices, counts = merge.threshold([p[0].to(v.dtype) for p in parts],
                                                      [p[1].long() for p in parts], nan != "propagate")
        if nan == "raise":
            _raise_on_nonfinite(values, lead)
        width = values.shape[-1]
        return SparseCodes(values.reshape(*lead, width), indices.reshape(*lead, width), self.d_sae,
                           None if counts is None else counts.reshape(lead))

    def _encode_topk(self, x2: Tensor, start: int) -> Tuple[Tensor, Tensor]:
        local = self._local
        codes = local.encode(x2, nan="propagate")
        x_in = x2.to(codes.values.dtype)
        if self.apply_b_dec_to_input:
            x_in = x_in - self.b_dec.to(x_in.dtype)
        return global_topk(x_in, local.W_enc, local.b_enc, codes.values, codes.indices, start, self.k, self._group)

    # ---- decode and steer ------------------------------------------------------------------
    def _local_codes(self, values: Tensor, indices: Tensor) -> Tuple[Tensor, Tensor]:
        """The entries of global codes that fall in this rank's range, with local indices."""
        start, stop = self.shard_range
        mine = (indices >= start) & (indices < stop)
        return (torch.where(mine, values, torch.zeros((), dtype=values.dtype, device=values.device)),
                torch.where(mine, indices - start, torch.full((), -1, dtype=indices.dtype, device=indices.device)))

    def _partial_decode(self, codes: SparseCodes) -> Tensor:
        rows = math.prod(codes.shape)               # (-1 is ambiguous for codes of width 0)
        v, i = codes.values.reshape(rows, codes.k), codes.indices.reshape(rows, codes.k)
        lv, li = self._local_codes(v, i)
        return _ops.decode(lv, li, self._local.W_dec, None, False)

    def _as_codes(self, codes) -> SparseCodes:
        if isinstance(codes, (tuple, list)) and len(codes) == 2 and all(isinstance(t, Tensor) for t in codes):
            codes = SparseCodes(codes[0], codes[1], self.d_sae)
        if not isinstance(codes, SparseCodes):
            raise TypeError(f"codes: expected SparseCodes or a pair (values, indices), got {type(codes).__name__}")
        if codes.d_sae != self.d_sae:
            raise ValueError(f"codes: expected codes of an SAE with d_sae={self.d_sae}, got d_sae={codes.d_sae}")
        if codes.indices.numel():
            lo, hi = int(codes.indices.min()), int(codes.indices.max())
            if lo < -1 or hi >= self.d_sae:
                raise ValueError(f"codes: index {lo if lo < -1 else hi} is out of range [-1, d_sae={self.d_sae})")
        return codes

    def decode(self, codes) -> Tensor:
        """``b_dec + sum values * W_dec[indices]`` for global codes (the same codes on every rank)."""
        codes = self._as_codes(codes)
        _comm.agree("decode", ("rows", "k"), (math.prod(codes.shape), codes.k), self._group)
        out = _comm.all_reduce_sum(self._partial_decode(codes), "the partial reconstructions (decode)", self._group)
        out = out + self.b_dec.to(out.dtype)
        return out.reshape(*codes.shape, self.d_in)

    def __call__(self, x: Tensor) -> Tensor:
        """The reconstruction of ``x``, in x's dtype."""
        return self.decode(self.encode(x)).to(x.dtype)

    forward = __call__

    def steer(self, x: Tensor, clamp, *, mode: str = "set", keep_error: bool = True, where: str = "always") -> Tensor:
        """As SAE.steer: ``x`` plus each clamped feature's change times its decoder row (with
        ``keep_error``), or the clamped reconstruction. Features are global indices; the rank that
        owns a feature adds its change."""
        only_active = check_mode(mode, where)
        if not isinstance(keep_error, bool):
            raise TypeError(f"keep_error: expected a bool, got {type(keep_error).__name__}")
        feature_max = None if self.stats is None else self.stats.max
        x2, lead = self._check_input(x, "steer")
        features, targets = parse_clamp(clamp, self.d_sae, x2.dtype, x2.device, feature_max)
        _comm.agree("steer", ("clamped features", "features fingerprint", "values fingerprint"),
                    (features.numel(), _fingerprint(features), _fingerprint(targets)), self._group)
        codes = self.encode(x2)
        v, i = codes.values, codes.indices
        zf = torch.stack([(v * (i == f)).sum(1) for f in features.tolist()], 1) if features.numel() else \
            v.new_zeros(v.shape[0], 0)
        delta = clamp_terms(zf.to(x2.dtype), targets, mode, only_active).delta
        start, stop = self.shard_range
        mine = (features >= start) & (features < stop)
        rows = self._local.W_dec[features[mine] - start].to(x2.dtype)
        change = delta[:, mine] @ rows
        if keep_error:
            y = x2 + _comm.all_reduce_sum(change, "the clamps' changes (steer)", self._group)
        else:
            part = self._partial_decode(codes).to(x2.dtype) + change
            y = _comm.all_reduce_sum(part, "the clamped reconstructions (steer)", self._group) + self.b_dec.to(x2.dtype)
        return y.reshape(*lead, self.d_in).to(x.dtype)

    def parse_clamp(self, clamp):
        """Validates a clamp once into a ParsedClamp that later steer calls accept (as SAE's)."""
        return parse_clamp(clamp, self.d_sae, torch.float32 if self.dtype != torch.float64 else torch.float64,
                           self.device, None if self.stats is None else self.stats.max)

    # ---- checkpoints -----------------------------------------------------------------------
    def save(self, path, *, overwrite: bool = False) -> None:
        """Writes the sharded checkpoint: every rank its slice, rank 0 the manifest (formats in
        docs/formats.md). ``sn.load(path)`` reads it as one SAE; ``load_shard`` on any world size."""
        checkpoint.save(self, path, overwrite=overwrite)


def global_topk(x_in: Tensor, W_enc: Tensor, b_enc: Tensor, values: Tensor, indices: Tensor, start: int, k: int,
                group, what: str = "the top-k candidates (encode)") -> Tuple[Tensor, Tensor]:
    """The global TopK codes ``[N, k]`` from this rank's candidates ``(values, indices) [N, c]``
    (local indices of latents from ``start``; W_enc, b_enc this rank's slices; ``x_in`` the
    encoder's input): one all_gather of (sort key, value, global index) triples, merged exactly."""
    v = values.detach()
    key = merge.zero_keys(x_in.detach(), W_enc.detach(), b_enc.detach(), v, indices)
    pad = k - v.shape[1]                   # a shard narrower than k sends all its latents
    key = torch.nn.functional.pad(key, (0, pad), value=-float("inf"))
    v = torch.nn.functional.pad(v, (0, pad))
    gi = torch.nn.functional.pad(indices + start, (0, pad), value=-1)
    parts = _comm.all_gather(torch.stack([key.double(), v.double(), gi.double()]), what, group)
    return merge.topk([p[0] for p in parts], [p[1].to(v.dtype) for p in parts], [p[2].long() for p in parts], k)


def shard(sae: SAE, group=None, *, sizes: Optional[Sequence[int]] = None) -> ShardedSAE:
    """Splits ``sae``'s latents into contiguous ranges over the ranks of ``group`` (default: the
    world; a 2-D DeviceMesh: its "latent" dimension). Every rank passes the same SAE; each keeps
    its slice. ``sizes`` (one int per rank, summing to d_sae) gives uneven ranges; by default they
    differ by at most one latent."""
    if not isinstance(sae, SAE):
        raise TypeError(f"sae: expected an sn.SAE, got {type(sae).__name__}")
    group = _comm.resolve_group(group)
    world = torch.distributed.get_world_size(group)
    _comm.agree("shard", ("world size", "d_in", "d_sae", "activation", "k", "dtype", "apply_b_dec_to_input",
                          "sizes", "W_enc fingerprint", "W_dec fingerprint", "b_enc fingerprint", "b_dec fingerprint"),
                (world, sae.d_in, sae.d_sae, _code(sae.activation, ACTIVATIONS + ("groupmax",)), sae.k or 0,
                 _code(sae.W_enc.dtype, DTYPES), int(sae.apply_b_dec_to_input),
                 -1 if sizes is None else hash(tuple(sizes)) & 0x7FFFFFFF,
                 _fingerprint(sae.W_enc), _fingerprint(sae.W_dec), _fingerprint(sae.b_enc), _fingerprint(sae.b_dec)),
                group)
    check_shardable(sae.activation, sae.normalize)
    ranges = ranges_from_sizes(sizes, sae.d_sae, world)
    start, stop = ranges[torch.distributed.get_rank(group)]
    threshold = None if sae.threshold is None else sae.threshold[start:stop]
    return from_slices(sae.W_enc[:, start:stop], sae.b_enc[start:stop], sae.W_dec[start:stop], sae.b_dec, threshold,
                       activation=sae.activation, k=sae.k, apply_b_dec_to_input=sae.apply_b_dec_to_input,
                       d_sae=sae.d_sae, ranges=ranges, group=group, metadata=sae.metadata, stats=sae.stats)


def from_slices(W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, threshold: Optional[Tensor], *,
                activation: str, k: Optional[int], apply_b_dec_to_input: bool, d_sae: int, ranges, group,
                metadata: Optional[dict] = None, stats=None) -> ShardedSAE:
    """The ShardedSAE of this rank's slices (copies: the full SAE's memory can be freed)."""
    start, stop = ranges[torch.distributed.get_rank(group)]
    local = SAE(W_enc.detach().contiguous().clone(), b_enc.detach().clone(), W_dec.detach().contiguous().clone(),
                b_dec.detach().clone(), activation=activation, k=None if k is None else min(k, stop - start),
                threshold=None if threshold is None else threshold.detach().clone(),
                apply_b_dec_to_input=apply_b_dec_to_input)
    out = ShardedSAE(local, local.b_dec, d_sae, ranges, group, k=k, metadata=metadata)
    out.stats = stats
    return out


def _code(value, choices) -> int:
    return choices.index(value) if value in choices else -1


def load_shard(path, group=None, *, device=None) -> ShardedSAE:
    """This rank's slice of a sharded checkpoint, for ``group``: only the latents of this rank's
    range are read, so the full SAE is never in one process. The checkpoint's number of shards
    need not be this world size (the ranges are cut anew, evenly)."""
    group = _comm.resolve_group(group)
    manifest, ranges, w = checkpoint.read_shard(path, group)
    activation, k, apply_b_dec = checkpoint.fmt.spec_settings(manifest)
    if device is not None:
        w = {n: None if t is None else t.to(device) for n, t in w.items()}
    return from_slices(w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"], w["threshold"], activation=activation, k=k,
                       apply_b_dec_to_input=apply_b_dec, d_sae=manifest["d_sae"], ranges=ranges, group=group,
                       metadata=manifest.get("metadata"))
