"""Where training batches come from: a tensor of activations, an iterable of batches, or a model
streaming its activations at a site through a shuffling buffer."""
from __future__ import annotations

from typing import Iterable, Iterator, Optional

import torch
from torch import Tensor, nn


def check_tensor(acts) -> None:
    """Activations given as one tensor must be floating [N >= 1, d_in]."""
    if not isinstance(acts, Tensor) or acts.dim() != 2 or not acts.is_floating_point():
        raise ValueError(f"activations: expected a floating tensor [N, d_in], got "
                         f"{getattr(acts, 'dtype', type(acts).__name__)} {list(getattr(acts, 'shape', []))}")
    if acts.shape[0] < 1:
        raise ValueError("activations: expected at least one row")


class TensorBatches:
    """Batches of a [N, d_in] tensor in a seeded random order, epoch after epoch. ``batch(step)``
    is a pure function of the step, so a resumed run sees exactly the batches it would have."""

    def __init__(self, acts: Tensor, batch_size: int, seed: int):
        check_tensor(acts)
        self.acts, self.batch_size, self.seed = acts, batch_size, seed
        self.per_epoch = max(1, acts.shape[0] // batch_size)
        self._perm_epoch, self._perm = -1, None

    @property
    def d_in(self) -> int:
        return self.acts.shape[1]

    def batch(self, step: int) -> Tensor:
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.acts.shape[0], generator=g), epoch
        rows = self._perm[i * self.batch_size:(i + 1) * self.batch_size]
        return self.acts[rows.to(self.acts.device)]


class IterableBatches:
    """Re-batches an iterable of [n, d_in] tensors into exact batches of batch_size rows."""

    def __init__(self, source: Iterable[Tensor], batch_size: int):
        self.source, self.batch_size = iter(source), batch_size
        self.pending: list = []
        self.pending_rows = 0
        self.d_in: Optional[int] = None

    def next(self) -> Optional[Tensor]:
        while self.pending_rows < self.batch_size:
            try:
                chunk = next(self.source)
            except StopIteration:
                break
            if not isinstance(chunk, Tensor) or chunk.dim() < 2 or not chunk.is_floating_point():
                raise ValueError("activations: the iterable must yield floating tensors [n, d_in]")
            chunk = chunk.reshape(-1, chunk.shape[-1])
            if self.d_in is None:
                self.d_in = chunk.shape[-1]
            elif chunk.shape[-1] != self.d_in:
                raise ValueError(f"activations: batches changed width from {self.d_in} to {chunk.shape[-1]}")
            self.pending.append(chunk)
            self.pending_rows += chunk.shape[0]
        if self.pending_rows == 0:
            return None
        data = torch.cat(self.pending)
        out, rest = data[:self.batch_size], data[self.batch_size:]
        self.pending = [rest] if rest.shape[0] else []
        self.pending_rows = rest.shape[0]
        return out


def stream_activations(model: nn.Module, site, token_batches: Iterable, *, batch_size: int = 4096,
                       buffer_tokens: int = 262_144, seed: int = 0, skip_first: int = 1,
                       device=None) -> Iterator[Tensor]:
    """Runs ``model`` on each item of ``token_batches`` (token-id tensors or dicts of inputs) and
    yields batches of the activations at ``site``, mixed through a shuffling buffer of
    ``buffer_tokens`` rows so consecutive batches do not come from the same texts. The forward
    stops at the site (later layers are not computed). ``skip_first`` drops each sequence's first
    positions (the BOS token's activations are outliers); padding (attention_mask 0) is dropped.
    """
    from ..hooks import SiteCapture
    g = torch.Generator().manual_seed(seed)
    buffer: list = []
    rows = 0
    with SiteCapture(model, [site]) as capture:
        for item in token_batches:
            inputs = item if isinstance(item, dict) else {"input_ids": item}
            hidden = capture(inputs)[site]
            mask = inputs.get("attention_mask")
            keep = torch.ones(hidden.shape[:2], dtype=torch.bool) if mask is None else mask.bool().cpu().clone()
            keep[:, :skip_first] = False
            acts = hidden.float().cpu()[keep]
            buffer.append(acts if device is None else acts.to(device))
            rows += acts.shape[0]
            if rows >= buffer_tokens:
                data = torch.cat(buffer)
                data = data[torch.randperm(data.shape[0], generator=g).to(data.device)]
                half = data.shape[0] // 2          # emit half, keep half mixing with what comes next
                for i in range(0, half - batch_size + 1, batch_size):
                    yield data[i:i + batch_size]
                emitted = (half // batch_size) * batch_size
                buffer, rows = [data[emitted:]], data.shape[0] - emitted
    if rows:
        data = torch.cat(buffer)
        data = data[torch.randperm(data.shape[0], generator=g).to(data.device)]
        for i in range(0, data.shape[0], batch_size):
            yield data[i:i + batch_size]
