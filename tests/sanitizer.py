"""Running Python under g++'s AddressSanitizer (and UBSan) runtime, for the sanitized builds of
the CPU module (tests/sanitize) and of the CUDA emulator (tests/cuda_emu).

The runtime must be loaded before Python starts (LD_PRELOAD, with libstdc++ so that C++ exceptions
thrown inside torch still work); leak checking is off (Python never frees everything).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]


def _gcc_file(name: str) -> Optional[str]:
    try:
        out = subprocess.run(["g++", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return None
    return out if os.path.isabs(out) and os.path.exists(out) else None


def runtime_libraries() -> Optional[List[str]]:
    """[libasan, libstdc++] to preload, or None where g++ has no AddressSanitizer runtime."""
    libs = [_gcc_file("libasan.so"), _gcc_file("libstdc++.so.6")]
    return None if None in libs else libs


def environment(extra: Optional[Dict[str, str]] = None) -> dict:
    libs = runtime_libraries()
    if libs is None:
        raise FileNotFoundError("g++'s AddressSanitizer runtime (libasan.so) was not found")
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(libs + ([env["LD_PRELOAD"]] if env.get("LD_PRELOAD") else []))
    env["ASAN_OPTIONS"] = "detect_leaks=0"
    env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1"
    env.update(extra or {})
    return env


def run(args: List[str], extra_env: Optional[Dict[str, str]] = None,
        timeout: Optional[float] = None) -> subprocess.CompletedProcess:
    """``python args...`` under the sanitizer, from the repository root; output captured."""
    return subprocess.run([sys.executable] + args, cwd=ROOT, env=environment(extra_env), capture_output=True,
                          text=True, timeout=timeout)
