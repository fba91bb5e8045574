"""Runs pytest (or any Python) with the AddressSanitizer + UBSan build of sae_native._C
(tests/sanitize/build.py) in place of the installed one:

    python tests/sanitize/run.py tests/test_encode.py tests/test_fuzz.py -q

tests/conftest.py loads the module named by SAE_NATIVE_SANITIZED_C before sae_native is imported.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import sanitizer  # noqa: E402  (tests/sanitizer.py)


def env(module: Path) -> dict:
    return {"SAE_NATIVE_SANITIZED_C": str(module)}


def run(args: List[str], planted: bool = False, timeout: Optional[float] = None) -> subprocess.CompletedProcess:
    """``python args...`` with the sanitized module (built if needed); output captured."""
    from build import build
    return sanitizer.run(args, env(build(planted=planted)), timeout)


def main(argv: List[str]) -> int:
    from build import build
    module = build()
    return subprocess.run([sys.executable, "-m", "pytest"] + argv, cwd=sanitizer.ROOT,
                          env=sanitizer.environment(env(module))).returncode


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main(sys.argv[1:]))
