"""Runs pytest (or any Python) on the emulator's AddressSanitizer build of the kernels: every load
and store the kernels make is checked against the bounds of the buffer it lands in (torch's CPU
tensors get redzones), so a kernel reading or writing out of bounds aborts with a report.

    python tests/cuda_emu/sanitized.py tests/test_cuda.py tests/test_cuda_emulator.py -k emulat

The sanitizer's runtime must be loaded before Python starts (LD_PRELOAD, with libstdc++ so that
C++ exceptions thrown inside torch still work); leak checking is off (Python never frees all).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[2]


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


def environment() -> dict:
    libs = runtime_libraries()
    if libs is None:
        raise FileNotFoundError("cuda_emu: g++'s AddressSanitizer runtime (libasan.so) was not found")
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(libs + ([env["LD_PRELOAD"]] if env.get("LD_PRELOAD") else []))
    env["ASAN_OPTIONS"] = "detect_leaks=0"
    env["SAE_NATIVE_CUDA_EMU_SANITIZE"] = "address"
    return env


def run(args: List[str], timeout: Optional[float] = None) -> subprocess.CompletedProcess:
    """``python args...`` under the sanitizer, from the repository root; output captured."""
    return subprocess.run([sys.executable] + args, cwd=ROOT, env=environment(), capture_output=True, text=True,
                          timeout=timeout)


def main(argv: List[str]) -> int:
    from build import build  # compile before the run, so a build error reads as one
    build(sanitize="address")
    return subprocess.run([sys.executable, "-m", "pytest"] + argv, cwd=ROOT, env=environment()).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
