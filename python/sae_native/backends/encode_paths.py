"""Which encode path runs: the package's own fused kernels, or the vendor GEMM + native epilogue
(gemm_path.py), chosen by measurement.

Neither path wins everywhere. The own kernels beat MKL on some CPUs (MKL takes a slower path on
AMD) and lose to it on others; where the own kernels have no SIMD variant for the CPU (an ARM
machine runs the generic C++), the vendor GEMM wins by an order of magnitude. So the first encode
of each (device, weight dtype, op, shape class, ISA, threads) times both paths, and every GEMM
blocking, on a slice of the real batch, and the fastest serves every later call of that class.

``SAE_NATIVE_ENCODE=own|gemm|auto`` (or ``set_encode_path``) overrides the choice, except in a
forked child whose torch threads would hang (see _torch_gemm_would_hang);
``SAE_NATIVE_ENCODE_CACHE=<file.json>`` keeps measured choices across processes (keyed by CPU
model, torch version and package version too). ``choices()`` is what ``sn.build_info()`` reports.

Both paths compute the same fp32 (fp64) pre-activations and share the epilogue's rules, so a
choice changes the speed, not the contract; the tests run the reference matrix on each path.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import threading
import time
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .gemm_path import BLOCKINGS, DEFAULT, Blocking

SETTINGS = ("auto", "own", "gemm")
PROBE_ROWS = 128      # rows of the real batch each candidate encodes while the choice is measured
RUNS = 2              # runs per candidate; the best counts (the first also pays first-touch costs)

_lock = threading.Lock()
_override: Optional[str] = None
_choices: Dict[str, "Choice"] = {}
_last_used: Dict[str, str] = {}     # a class without its context -> the key the last encode of it used
_disk_loaded: Optional[str] = None
_warned: set = set()
_forked = False                     # this process is a fork() child (see _torch_gemm_would_hang)


def _after_fork_in_child() -> None:
    global _forked, _lock
    _forked = True
    _lock = threading.Lock()        # one a parent thread held at the fork would never be released


os.register_at_fork(after_in_child=_after_fork_in_child)


def _torch_gemm_would_hang(device: str) -> bool:
    """In a child forked from a process whose torch ran parallel CPU ops, torch's OpenMP team is
    gone, and the child's next parallel torch op (the GEMM path's matmul) waits for it forever.
    With one torch thread (``torch.set_num_threads(1)``, as DataLoader workers set) no team is
    used. The own kernels re-create their threads after a fork, so they serve such a child."""
    return device == "cpu" and _forked and torch.get_num_threads() > 1


@dataclasses.dataclass(frozen=True)
class Choice:
    path: str                          # "own" or "gemm"
    blocking: Optional[Blocking]       # the GEMM path's rows x latents (None for own)
    ms: Dict[str, float]               # each candidate's estimated time for the call, in ms (the
                                       # probe's best time scaled to the call's rows)
    rows: int                          # rows the probe encoded
    source: str                        # "measured" or "disk"

    def as_dict(self, key: str) -> dict:
        return {"key": key, "path": self.path, "blocking": dataclasses.asdict(self.blocking) if self.blocking else None,
                "ms": dict(self.ms), "probe_rows": self.rows, "source": self.source}


def set_encode_path(path: Optional[str]) -> Optional[str]:
    """Forces the encode path for this process: "own", "gemm" or "auto" (None: back to
    SAE_NATIVE_ENCODE). Returns the previous override."""
    global _override
    if path is not None and (not isinstance(path, str) or path.lower() not in SETTINGS):
        raise ValueError(f"set_encode_path: path must be one of {SETTINGS} or None, got {path!r}")
    before, _override = _override, (path.lower() if path is not None else None)
    return before


def setting() -> str:
    """The path setting in force: the override, else SAE_NATIVE_ENCODE, else "auto"."""
    if _override is not None:
        return _override
    wanted = os.environ.get("SAE_NATIVE_ENCODE")
    if not wanted:
        return "auto"
    if wanted.lower() in SETTINGS:
        return wanted.lower()
    if wanted not in _warned:
        _warned.add(wanted)
        warnings.warn(f"SAE_NATIVE_ENCODE={wanted!r} is not one of {SETTINGS}; using 'auto'", stacklevel=3)
    return "auto"


def _rows_class(n: int) -> str:
    # A generation step (a few rows) streams W_enc once; a batch is compute bound: different winners.
    return "rows<=16" if n <= 16 else "rows<=256" if n <= 256 else "rows>256"


def _class_of(device: str, op: str, weight_dtype: torch.dtype, n: int, d_in: int, d_sae: int, k: int) -> str:
    return (f"{device}|{str(weight_dtype).replace('torch.', '')}|{op}|{_rows_class(n)}|"
            f"d_in={d_in}|d_sae={d_sae}|k={k}|")


def key_of(device: str, op: str, a, context: str) -> str:
    d_in, d_sae = a.W_enc.shape
    packed = "packed" if a.packed is not None else "unpacked"   # unpacked: the own path packs every call
    return _class_of(device, op, a.W_enc.dtype, a.x.shape[0], d_in, d_sae, a.k) + f"{packed}|{context}"


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from .. import _C
    return f"{model}|torch {torch.__version__}|sae-native {getattr(_C, '__version__', 'unknown')}"


def _cache_file() -> Optional[str]:
    return os.environ.get("SAE_NATIVE_ENCODE_CACHE") or None


def _load_disk() -> None:
    """Reads SAE_NATIVE_ENCODE_CACHE once per file: the entries measured on this machine."""
    global _disk_loaded
    path = _cache_file()
    if path is None or path == _disk_loaded:
        return
    _disk_loaded = path
    if not os.path.exists(path):
        return                              # the first process to use it: written after measuring
    try:
        with open(path) as f:
            data = json.load(f)
        entries = data.get(_machine(), {}) if isinstance(data, dict) else {}
        for key, e in entries.items():
            blocking = Blocking(int(e["blocking"]["rows"]), int(e["blocking"]["latents"])) if e.get("blocking") else None
            if e["path"] in ("own", "gemm") and key not in _choices:
                _choices[key] = Choice(e["path"], blocking, {str(n): float(v) for n, v in e["ms"].items()},
                                       int(e["probe_rows"]), "disk")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        warnings.warn(f"SAE_NATIVE_ENCODE_CACHE={path!r} could not be read ({e}); measuring again", stacklevel=4)


def _save_disk(key: str, choice: Choice) -> None:
    path = _cache_file()
    if path is None:
        return
    try:
        data = {}
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            pass                            # absent or unreadable (warned when read): written anew
        if not isinstance(data, dict):
            data = {}
        entry = choice.as_dict(key)
        entry.pop("key")
        data.setdefault(_machine(), {})[key] = entry
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except (OSError, ValueError) as e:
        warnings.warn(f"SAE_NATIVE_ENCODE_CACHE={path!r} could not be written ({e})", stacklevel=4)


def _best_ms(fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(RUNS):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def _measure(a, own: Callable, gemm: Callable, prepare: Callable) -> Choice:
    n = a.x.shape[0]
    rows = min(n, PROBE_ROWS)
    probe = a._replace(x=a.x[:rows])
    t0 = time.perf_counter()
    own_probe = prepare(probe)
    prepare_ms = (time.perf_counter() - t0) * 1e3
    # Estimates for the whole call: the probe's time scaled to n rows, plus, where the caller
    # gave no packed W_enc (training: the weights change every step), the packing each call pays.
    scale = n / rows
    own_extra = prepare_ms if own_probe is not probe else 0.0
    d_sae = a.W_enc.shape[1]
    candidates: List[Tuple[str, Optional[Blocking], Callable[[], object], float]] = [
        ("own", None, lambda: own(own_probe), own_extra)]
    seen = set()
    for b in BLOCKINGS:
        fitted = b.fit(rows, d_sae)
        if fitted not in seen:
            seen.add(fitted)
            candidates.append(("gemm", b, lambda b=b: gemm(probe, b), 0.0))
    ms = {}
    best = None
    for path, blocking, fn, extra in candidates:
        name = path if blocking is None else f"gemm {blocking.rows}x{blocking.latents}"
        ms[name] = round(_best_ms(fn) * scale + extra, 4)
        if best is None or ms[name] < best[2]:
            best = (path, blocking, ms[name])
    return Choice(best[0], best[1], ms, rows, "measured")


def choose(key: str, a, own: Callable, gemm: Callable, prepare: Callable = lambda a: a) -> Choice:
    """The measured choice for ``key`` (measured now, on a slice of ``a``, if it is new)."""
    with _lock:                            # one measurement at a time: concurrent ones would time each other
        _load_disk()
        c = _choices.get(key)
        if c is None:
            c = _measure(a, own, gemm, prepare)
            _choices[key] = c
            _save_disk(key, c)
        return c


def run(device: str, op: str, a, own: Callable, gemm: Callable, context: str = "",
        prepare: Callable = lambda a: a):
    """Encodes ``a`` on the path the setting and the measurements pick. ``own(a)`` and
    ``gemm(a, blocking)`` are the two paths' kernels; ``context`` adds what else the speed depends
    on (the CPU kernel variant, the thread count) to the choice's key; ``prepare(a)`` readies the
    own kernel's arguments once before they are timed (packing; returns ``a`` itself when there is
    nothing to do)."""
    s = setting()
    if s == "own" or a.x.shape[0] == 0:
        return own(a)
    if _torch_gemm_would_hang(device):
        if s == "gemm" and "fork" not in _warned:
            _warned.add("fork")
            warnings.warn("encode path 'gemm' is not used in this forked child: torch's CPU thread team did not "
                          "survive the fork and its matmul would hang; the own kernels run instead (call "
                          "torch.set_num_threads(1) in the child to allow the GEMM path)", stacklevel=3)
        return own(a)
    key = key_of(device, op, a, context)
    if s == "gemm":
        c = _choices.get(key)
        return gemm(a, c.blocking if c is not None and c.blocking is not None else DEFAULT)
    c = choose(key, a, own, gemm, prepare)
    d_in, d_sae = a.W_enc.shape
    _last_used[_class_of(device, op, a.W_enc.dtype, a.x.shape[0], d_in, d_sae, a.k)] = key
    return own(a) if c.path == "own" else gemm(a, c.blocking)


def choices() -> dict:
    """The setting and every choice made in this process (for sn.build_info())."""
    with _lock:
        return {"setting": setting(), "cache_file": _cache_file(),
                "choices": [c.as_dict(k) for k, c in sorted(_choices.items())]}


def chosen(device: str, op: str, weight_dtype: torch.dtype, n: int, d_in: int, d_sae: int,
           k: Optional[int]) -> Optional[Choice]:
    """The choice the last auto encode of this class used (whatever the kernel variant, threads or
    packing were then; k None or 0 for threshold encodes), or None if none ran on auto."""
    with _lock:
        key = _last_used.get(_class_of(device, op, weight_dtype, n, d_in, d_sae, k or 0))
        return _choices.get(key) if key is not None else None


def forget() -> None:
    """Drops every choice (the next encode of each class measures again)."""
    global _disk_loaded
    with _lock:
        _choices.clear()
        _last_used.clear()
        _disk_loaded = None
