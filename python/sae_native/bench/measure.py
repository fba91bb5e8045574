"""Timing (interleaved across implementations, caches flushed) and peak extra memory of a call."""
from __future__ import annotations

import ctypes
import ctypes.util
import re
import time
from typing import Callable, Dict, List, Optional

import torch


def last_level_cache_bytes() -> int:
    """The CPU's last-level cache (Linux sysfs), or 32 MiB when unknown."""
    best = 0
    for index in range(8):
        try:
            with open(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size") as f:
                text = f.read().strip()
        except OSError:
            continue
        scale = {"K": 2 ** 10, "M": 2 ** 20}.get(text[-1:], 1)
        best = max(best, int(text.rstrip("KM")) * scale)
    return best or 32 * 2 ** 20


class CacheFlusher:
    """Writes a buffer twice the size of the last-level cache (or the GPU's L2), so every timed
    call starts with cold caches: no implementation inherits the weight rows its predecessor in
    the interleaved order just read, as none would inside a model's forward pass."""

    def __init__(self, device: torch.device):
        if device.type == "cuda":
            size = 2 * getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 * 2 ** 20)
        else:
            size = 2 * last_level_cache_bytes()
        self.buffer = torch.empty(max(size, 2 ** 20) // 4, device=device)
        self.value = 0.0

    def __call__(self) -> None:
        self.value += 1.0
        self.buffer.fill_(self.value)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call: CUDA events around it on a GPU (the device's time, not the host's
    launch overhead), the wall clock around a synchronised call elsewhere."""
    _sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(fns: Dict[str, Callable[[], object]], repeats: int, device: torch.device,
                warmup: int = 1, tick: Optional[Callable[[], None]] = None,
                flush: Optional[Callable[[], None]] = None) -> Dict[str, List[float]]:
    """Seconds per call of each function, run A B C, B C A, C A B, ... so machine drift hits all
    alike and each follows each other equally often; `flush` (outside the timing) before each."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    _sync(device)
    names = list(fns)
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for r in range(repeats):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            if flush is not None:
                flush()
            times[name].append(_timed(fns[name], device))
        if tick is not None:
            tick()
    return times


def quantile(values: List[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


def _rss_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            m = re.search(field + r":\s+(\d+)", f.read())
        return int(m.group(1)) if m else None
    except OSError:
        return None


def _release_free_heap() -> None:
    """glibc keeps freed memory resident for reuse, where a call's allocations would not show up as
    growth; malloc_trim hands it back to the system first."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_extra_mb(fn: Callable[[], object], device: torch.device) -> Optional[float]:
    """Peak memory one call adds on top of what was in use before it (MiB); None if this platform
    cannot tell. CPU: Linux's VmHWM after resetting it through /proc/self/clear_refs (resident
    memory, so pages the call allocates but never touches do not count)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        torch.cuda.synchronize(device)
        del out
        return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
    _release_free_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    base = _rss_kib("VmRSS")
    out = fn()
    peak = _rss_kib("VmHWM")
    del out
    if base is None or peak is None:
        return None
    return max(0.0, (peak - base) / 1024)
