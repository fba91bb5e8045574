"""Runs pytest (or any Python) on the emulator's AddressSanitizer build of the kernels: every load
and store the kernels make is checked against the bounds of the buffer it lands in (torch's CPU
tensors get redzones), so a kernel reading or writing out of bounds aborts with a report.

    python tests/cuda_emu/sanitized.py tests/test_cuda.py tests/test_cuda_emulator.py -k emulat

(The runtime's set-up is tests/sanitizer.py, shared with the CPU module's sanitized build.)
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sanitizer  # noqa: E402  (tests/sanitizer.py)

ENV = {"SAE_NATIVE_CUDA_EMU_SANITIZE": "address"}
runtime_libraries = sanitizer.runtime_libraries


def run(args: List[str], timeout: Optional[float] = None) -> subprocess.CompletedProcess:
    """``python args...`` under the sanitizer with the emulator's sanitized build; output captured."""
    return sanitizer.run(args, ENV, timeout)


def main(argv: List[str]) -> int:
    from build import build  # compile before the run, so a build error reads as one
    build(sanitize="address")
    return subprocess.run([sys.executable, "-m", "pytest"] + argv, cwd=sanitizer.ROOT,
                          env=sanitizer.environment(ENV)).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
