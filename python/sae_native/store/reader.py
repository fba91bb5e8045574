"""Reading a store: shards memory-mapped one at a time, rows mixed through a bounded shuffling
buffer, deterministic for a seed, epoch after epoch, with disjoint row ranges per data-parallel
rank."""
from __future__ import annotations

import os
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor

from . import manifest as mf
from .shards import FROM_NAME, Shard


class ActivationStore:
    """The activations ``sae-native cache`` / ``sn.store.write_store`` wrote to ``folder``.

    ``sites`` ({site: width}), ``d_in`` (the width, for a one-site store), ``dtype`` (on disk),
    ``n_tokens`` (``len(store)``), ``complete`` (False while a writer is still adding shards:
    only the shards the manifest lists are read, each whole). Every shard's size and header are
    checked when it is opened, and its checksum the first time (``verify=True``).

    ``batches(...)`` feeds ``sn.train`` and ``sn.evaluate`` (which also take the store itself)."""

    def __init__(self, folder, *, verify: bool = True):
        self.folder = os.fspath(folder)
        self.manifest = mf.read(self.folder)
        self.sites: Dict[str, int] = dict(self.manifest["sites"])
        self.dtype: torch.dtype = FROM_NAME[self.manifest["dtype"]]
        self.verify = bool(verify)
        self._verified: set = set()
        self._starts = [0]
        for s in self.manifest["shards"]:
            self._starts.append(self._starts[-1] + s["tokens"])
        self._lo, self._hi = 0, self._starts[-1]      # the rows this object reads (see rows())

    # ---- what it holds ---------------------------------------------------------------------
    @property
    def n_tokens(self) -> int:
        return self._hi - self._lo

    def __len__(self) -> int:
        return self.n_tokens

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    @property
    def d_in(self) -> int:
        if len(self.sites) != 1:
            raise ValueError(f"d_in: the store holds {len(self.sites)} sites ({', '.join(self.sites)}); see .sites")
        return next(iter(self.sites.values()))

    def __repr__(self) -> str:
        rows = "" if (self._lo, self._hi) == (0, self._starts[-1]) else f", rows=[{self._lo}, {self._hi})"
        return (f"ActivationStore({self.folder!r}, sites={self.sites}, tokens={self.n_tokens}{rows}, "
                f"dtype={self.manifest['dtype']}, shards={len(self.manifest['shards'])}"
                f"{'' if self.complete else ', incomplete'})")

    def rows(self, start: int, stop: int) -> "ActivationStore":
        """A view of the rows ``[start, stop)`` in store order (no copy; the same files), e.g. a
        held-out split: ``store.rows(0, n - m)`` to train on and ``store.rows(n - m, n)`` to
        evaluate on, other texts than the training rows when the store was written from texts."""
        for name, v in (("start", start), ("stop", stop)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name}: expected an int, got {v!r}")
        if not 0 <= start < stop <= self.n_tokens:
            raise ValueError(f"start, stop: expected 0 <= start < stop <= {self.n_tokens}, got [{start}, {stop})")
        view = object.__new__(ActivationStore)
        view.__dict__.update(self.__dict__)
        view._lo, view._hi = self._lo + start, self._lo + stop
        return view

    def _site(self, site: Optional[str]) -> str:
        if site is None:
            if len(self.sites) != 1:
                raise ValueError(f"site: the store holds {len(self.sites)} sites; name one of {list(self.sites)}")
            return next(iter(self.sites))
        if site not in self.sites:
            raise KeyError(f"site: {site!r} is not in the store; it holds {list(self.sites)}")
        return site

    def _open(self, i: int) -> Shard:
        entry = self.manifest["shards"][i]
        verify = self.verify and entry["file"] not in self._verified
        shard = Shard(os.path.join(self.folder, entry["file"]), entry, self.sites, self.dtype, verify)
        self._verified.add(entry["file"])
        return shard

    def tensor(self, site: Optional[str] = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """Every row of ``site`` in store order, as one tensor in ``dtype`` (for stores that fit in memory)."""
        site = self._site(site)
        out = torch.empty(self.n_tokens, self.sites[site], dtype=dtype)
        for i, a, b in self._pieces(0, 1):
            at = self._starts[i] + a - self._lo
            out[at:at + b - a] = self._open(i).rows(site, a, b)
        return out

    # ---- batches ---------------------------------------------------------------------------
    def _pieces(self, rank: int, world_size: int) -> List[Tuple[int, int, int]]:
        """(shard, start, stop) row ranges of this rank: rows [rank * N / W, (rank + 1) * N / W) of
        this object's rows."""
        lo = self._lo + rank * self.n_tokens // world_size
        hi = self._lo + (rank + 1) * self.n_tokens // world_size
        out = []
        for i in range(len(self.manifest["shards"])):
            a, b = max(lo, self._starts[i]), min(hi, self._starts[i + 1])
            if a < b:
                out.append((i, a - self._starts[i], b - self._starts[i]))
        return out

    def batches(self, batch_size: int, *, site: Optional[str] = None, shuffle: bool = True, seed: int = 0,
                epochs: Optional[int] = 1, buffer_mb: float = 256, rank: int = 0, world_size: int = 1,
                dtype: torch.dtype = torch.float32, drop_last: bool = False, progress: bool = False) -> Iterator[Tensor]:
        """Yields ``[batch_size, d]`` tensors of ``site``'s activations in ``dtype``.

        With ``shuffle``, the shard pieces come in a seeded random order each epoch and the rows
        pass through a shuffling buffer of ``buffer_mb`` (half of it emitted, half kept to mix
        with what comes next): the same seed gives the same batches. ``epochs=None`` repeats
        forever. ``rank`` / ``world_size`` give each data-parallel rank a disjoint, equal share
        of the rows. The last, shorter batch of the whole run is yielded unless ``drop_last``."""
        site = self._site(site)
        for name, v, low in (("batch_size", batch_size, 1), ("world_size", world_size, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {v!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank: expected an int in [0, {world_size}), got {rank!r}")
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
            raise ValueError(f"epochs: expected an int >= 1 or None (forever), got {epochs!r}")
        if not isinstance(buffer_mb, (int, float)) or isinstance(buffer_mb, bool) or not buffer_mb > 0:
            raise ValueError(f"buffer_mb: expected a positive size, got {buffer_mb!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype: expected a floating torch dtype, got {dtype!r}")
        pieces = self._pieces(rank, world_size)
        if not pieces:
            raise ValueError(f"the store holds {self.n_tokens} rows: none for rank {rank} of {world_size}")
        d = self.sites[site]
        g = torch.Generator().manual_seed(seed)
        from .._progress import bar as progress_bar
        bar = progress_bar(progress, desc="store", unit="tok", unit_scale=True,
                           total=None if epochs is None else epochs * sum(b - a for _, a, b in pieces))

        def chunks() -> Iterator[Tensor]:
            """Views of the mapped rows, piece after piece, epoch after epoch (at most ``step`` rows)."""
            epoch = 0
            while epochs is None or epoch < epochs:
                order = torch.randperm(len(pieces), generator=g).tolist() if shuffle else range(len(pieces))
                for p in order:
                    i, a, b = pieces[p]
                    shard = self._open(i)
                    for start in range(a, b, step):
                        yield shard.rows(site, start, min(b, start + step))
                        shard.release(site, start, min(b, start + step))   # copied out by now
                    del shard                       # unmapped: its pages leave the process
                epoch += 1

        try:
            if shuffle:
                # One fixed buffer: rows are converted into free slots, a random half of the held
                # rows is emitted (gathered batch by batch), and their slots take the next rows.
                # The buffer holds the store's dtype (no conversion on the way in, twice the rows of
                # a float32 buffer); batches are converted as they are gathered.
                cap = max(2 * batch_size, int(buffer_mb * 2 ** 20) // (d * self.dtype.itemsize))
                step = max(1, cap // 4)
                buf = torch.empty(cap, d, dtype=self.dtype)
                free, live = torch.arange(cap), torch.empty(0, dtype=torch.int64)
                for rows in chunks():
                    while rows.shape[0]:
                        take = min(rows.shape[0], free.shape[0])
                        slots, free = free[:take], free[take:]
                        buf.index_copy_(0, slots, rows[:take])
                        live, rows = torch.cat([live, slots]), rows[take:]
                        if free.shape[0] == 0:
                            live = live[torch.randperm(live.shape[0], generator=g)]
                            out = (live.shape[0] // 2 // batch_size) * batch_size
                            for j in range(0, out, batch_size):
                                if bar is not None:
                                    bar.update(batch_size)
                                yield buf[live[j:j + batch_size]].to(dtype)
                            free, live = live[:out], live[out:]
                live = live[torch.randperm(live.shape[0], generator=g)]
                tail = buf[live].to(dtype)
            else:
                step = max(batch_size, int(buffer_mb * 2 ** 20) // (d * dtype.itemsize) // 4)
                carry = torch.empty(0, d, dtype=dtype)
                for rows in chunks():
                    data = torch.cat([carry, rows.to(dtype)]) if carry.shape[0] else rows.to(dtype, copy=True)
                    full = (data.shape[0] // batch_size) * batch_size
                    for j in range(0, full, batch_size):
                        if bar is not None:
                            bar.update(batch_size)
                        yield data[j:j + batch_size]
                    carry = data[full:]
                tail = carry
            full = (tail.shape[0] // batch_size) * batch_size
            for j in range(0, full, batch_size):
                yield tail[j:j + batch_size]
            if full < tail.shape[0] and not drop_last:
                yield tail[full:]
        finally:
            if bar is not None:
                bar.close()
