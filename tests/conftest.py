import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


def _use_sanitized_module(path: str) -> None:
    """tests/sanitize/run.py: the AddressSanitizer build of sae_native._C replaces the installed one."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("sae_native._C", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["sae_native._C"] = module


if os.environ.get("SAE_NATIVE_SANITIZED_C"):
    _use_sanitized_module(os.environ["SAE_NATIVE_SANITIZED_C"])

import sae_native as sn  # noqa: E402

if os.environ.get("SAE_NATIVE_SANITIZED_C"):
    sn._C = sys.modules["sae_native._C"]
    assert sn._C.__file__ == os.environ["SAE_NATIVE_SANITIZED_C"]
from cuda_emu import build as emu_build  # noqa: E402
from sae_native import _C  # noqa: E402

ISAS = list(_C.supported_isas())

# The suite runs the own kernels unless a test asks for a path: "auto" picks by measurement, and
# the two paths' sums may differ in the last bit (MKL adds in its own order), so a test comparing
# two encodes bit for bit must not see them on different paths. The encode_path fixture runs the
# encode / steer / training matrix on each path; test_encode_paths.py tests "auto".
sn.set_encode_path(os.environ.get("SAE_NATIVE_ENCODE") or "own")


@pytest.fixture(params=["own", "gemm"])
def encode_path(request):
    """Runs a test on each encode path: the own fused kernels and the vendor GEMM + epilogue."""
    before = sn.set_encode_path(request.param)
    yield request.param
    sn.set_encode_path(before)


@pytest.fixture(params=ISAS)
def isa(request):
    """Runs a test once per encode kernel variant this CPU supports."""
    before = _C.cpu_isa()
    assert _C.select_isa(request.param)
    yield request.param
    _C.select_isa(before)


@pytest.fixture(params=[1, 2, 3])
def threads(request):
    before = sn.get_num_threads()
    sn.set_num_threads(request.param)
    yield request.param
    sn.set_num_threads(before)


@pytest.fixture(params=["openmp", "own"])
def thread_pool(request):
    """Runs a test on torch's OpenMP team (when loaded) and on the package's own threads."""
    from sae_native import _runtime
    before = "openmp" if _C.using_openmp_runtime() else "own"
    _runtime.select_thread_pool(request.param)
    yield request.param
    _runtime.select_thread_pool(before)


@pytest.fixture(scope="session")
def emulator():
    """The CPU emulator's build of the CUDA kernels (tests/cuda_emu; compiled once, cached under
    build/cuda_emu). Skips where CUDA's headers are missing."""
    try:
        return emu_build.load()
    except FileNotFoundError as e:
        pytest.skip(str(e))
