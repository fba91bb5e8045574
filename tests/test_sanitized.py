"""The CPU module under AddressSanitizer + UBSan (tests/sanitize): the build catches a planted
out-of-bounds read of our own decode, and a sample of the kernel tests plus the fuzzer run clean.

The whole suite on the sanitized build: python tests/sanitize/run.py tests -k "not emulat"
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "sanitize"))
import sanitizer  # noqa: E402  (tests/sanitizer.py)

if sanitizer.runtime_libraries() is None:
    pytest.skip("g++ has no AddressSanitizer runtime here", allow_module_level=True)

import run as sanitized  # noqa: E402  (tests/sanitize/run.py)

DECODE_ONE_PAST_THE_END = """
import sys; sys.path.insert(0, "tests"); import conftest, torch, sae_native as sn
W = torch.randn(5, 3, dtype=torch.float64)
sn.functional.decode(torch.ones(1, 1, dtype=torch.float64), torch.tensor([[5]]), W)
"""


def test_the_sanitizer_catches_a_planted_out_of_bounds_read():
    # The planted build's decode accepts index == d_sae and reads one row past W_dec.
    proc = sanitized.run(["-c", DECODE_ONE_PAST_THE_END], planted=True, timeout=600)
    assert proc.returncode != 0 and "heap-buffer-overflow" in proc.stderr, proc.stderr[-3000:]
    # The real build refuses the same index without touching memory.
    proc = sanitized.run(["-c", DECODE_ONE_PAST_THE_END], timeout=600)
    assert proc.returncode != 0 and "ValueError" in proc.stderr and "Sanitizer" not in proc.stderr, \
        proc.stderr[-3000:]


def test_kernel_tests_and_the_fuzzer_run_clean_under_the_sanitizer():
    proc = sanitized.run(["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/test_encode.py",
                          "tests/test_decode.py", "tests/test_steer.py", "tests/test_nonfinite.py",
                          "tests/test_fuzz.py", "-k", "not peak_memory"], timeout=1800)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert " passed" in proc.stdout and "Sanitizer" not in proc.stderr
