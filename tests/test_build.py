"""The build's CUDA switch: with SAE_NATIVE_REQUIRE_CUDA=1 a build that would come out CPU-only fails
instead (configure step only, with no CUDA compiler reachable)."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pybind11 = pytest.importorskip("pybind11")
CMAKE = shutil.which("cmake")
pytestmark = pytest.mark.skipif(CMAKE is None, reason="cmake is not on PATH")


def configure(tmp_path, require: bool) -> subprocess.CompletedProcess:
    # No nvcc on this PATH, no CUDACXX: check_language(CUDA) finds no compiler.
    env = {k: v for k, v in os.environ.items() if k not in ("CUDACXX", "CUDA_HOME", "CUDA_PATH")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep)
                                  if not os.path.exists(os.path.join(p, "nvcc")))
    env["PATH"] = os.path.dirname(CMAKE) + os.pathsep + env["PATH"]
    if require:
        env["SAE_NATIVE_REQUIRE_CUDA"] = "1"
    else:
        env.pop("SAE_NATIVE_REQUIRE_CUDA", None)
    return subprocess.run([CMAKE, "-S", ROOT, "-B", str(tmp_path / "build"), f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
                           f"-DPython_EXECUTABLE={sys.executable}"], env=env, capture_output=True, text=True,
                          timeout=300)


def test_a_cpu_only_build_is_quiet_by_default(tmp_path):
    proc = configure(tmp_path, require=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "building the CPU module only" in proc.stdout


def test_require_cuda_makes_a_cpu_only_build_fail(tmp_path):
    proc = configure(tmp_path, require=True)
    assert proc.returncode != 0
    said = " ".join((proc.stdout + proc.stderr).split())   # CMake wraps its messages
    assert "SAE_NATIVE_REQUIRE_CUDA=1, but no working CUDA compiler was found" in said
