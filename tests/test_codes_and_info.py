"""SparseCodes behaviour and build_info."""
import pytest
import torch

import sae_native as sn
from helpers import make_pair, randn


def test_build_info_names_the_kernel_variant():
    info = sn.build_info()
    for key in ("version", "cpu_isa", "cuda_compiled", "cuda_archs", "num_threads"):
        assert key in info
    assert info["cpu_isa"] in info["cpu_isas_supported"]
    assert isinstance(info["cuda_compiled"], bool) and isinstance(info["cuda_archs"], list)
    assert info["version"] == sn.__version__


def test_cuda_module_is_built_wherever_nvcc_is():
    # CI has nvcc: this is what makes a CUDA compile error fail CI instead of silently skipping.
    import os
    import shutil
    if shutil.which("nvcc") is None and not os.path.exists("/usr/local/cuda/bin/nvcc"):
        pytest.skip("no nvcc on this machine")
    if "SAE_NATIVE_CUDA=OFF" in os.environ.get("CMAKE_ARGS", ""):
        pytest.skip("built with -DSAE_NATIVE_CUDA=OFF")
    info = sn.build_info()
    assert info["cuda_compiled"], "nvcc is installed but the CUDA module was not built"
    assert info["cuda_archs"]


def test_public_names():
    assert set(sn.__all__) >= {"SAE", "SparseCodes", "functional", "build_info", "set_num_threads"}
    for name in ("encode", "decode", "steer", "reconstruct"):
        assert callable(getattr(sn.functional, name))


def test_isa_environment_variable_forces_a_variant():
    import subprocess
    import sys
    env_isa = sn.build_info()["cpu_isas_supported"][-1]
    out = subprocess.run([sys.executable, "-c", "import sae_native as sn; print(sn.build_info()['cpu_isa'])"],
                         capture_output=True, text=True, env={**__import__("os").environ, "SAE_NATIVE_ISA": env_isa})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == env_isa


@pytest.mark.parametrize("value, warns", [("bogus", "is not a kernel variant"), ("AVX9", "is not a kernel variant"),
                                          ("GENERIC", None), (" generic ", None)])
def test_isa_environment_variable_is_checked(value, warns):
    import os
    import subprocess
    import sys
    code = ("import warnings; warnings.simplefilter('always'); import sae_native as sn; "
            "print(sn.build_info()['cpu_isa'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "SAE_NATIVE_ISA": value})
    assert out.returncode == 0, out.stderr
    if warns is None:
        assert out.stdout.strip() == "generic" and "SAE_NATIVE_ISA" not in out.stderr
    else:
        best = sn.build_info()["cpu_isas_supported"][0]
        assert out.stdout.strip() == best
        assert f"SAE_NATIVE_ISA={value!r} {warns}; accepted values here: " in out.stderr
        assert ", ".join(sn.build_info()["cpu_isas_supported"]) in out.stderr


def test_sparse_codes_validation_and_helpers():
    with pytest.raises(ValueError, match="indices: expected the shape of values"):
        sn.SparseCodes(torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.int64), 10)
    with pytest.raises(TypeError, match="indices: expected int64"):
        sn.SparseCodes(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int32), 10)
    with pytest.raises(ValueError, match="counts: expected shape"):
        sn.SparseCodes(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int64), 10, torch.zeros(3))
    codes = sn.SparseCodes(torch.tensor([[3.0, 1.0, 0.0]]), torch.tensor([[4, 0, 7]]), 10)
    assert codes.counts.tolist() == [2] and codes.k == 3 and codes.shape == (1,)
    assert codes.to_dense().tolist() == [[1.0, 0, 0, 0, 3.0, 0, 0, 0, 0, 0]]
    assert "SparseCodes(shape=[1], k=3, d_sae=10" in repr(codes)


def test_sae_attributes_and_to():
    sae, _ = make_pair(8, 20, "topk", 4)
    assert (sae.d_in, sae.d_sae, sae.k, sae.activation) == (8, 20, 4, "topk")
    assert sae.W_enc.shape == (8, 20) and sae.W_dec.shape == (20, 8) and sae.threshold is None
    bf = sae.copy().to(dtype=torch.bfloat16)       # .to() works in place, as on any nn.Module
    assert bf.W_enc.dtype == torch.bfloat16 and sae.W_enc.dtype == torch.float32
    x = randn(5, 8)
    torch.testing.assert_close(bf(x), sae(x), atol=0.05, rtol=0.05)
    assert "SAE(d_in=8, d_sae=20, activation='topk', k=4" in repr(sae)


class _FakeCuda:
    ARCHS = ["90a-real"]

    def __init__(self, driver, runtime, devices, error=""):
        self.info = {"driver_version": driver, "runtime_version": runtime, "device_count": devices, "error": error}

    def runtime_info(self):
        return self.info


@pytest.mark.parametrize("fake, want", [
    (_FakeCuda(0, 13000, 0, "cudaErrorInsufficientDriver: ..."), "no NVIDIA driver was found"),
    (_FakeCuda(12040, 13000, 0, "cudaErrorInsufficientDriver: ..."),
     "the driver supports CUDA 12.4, older than the CUDA 13.0 runtime this module links: update the driver"),
    (_FakeCuda(13000, 13000, 0, "cudaErrorNoDevice: no CUDA-capable device is detected"), "cudaErrorNoDevice"),
    (_FakeCuda(13010, 13000, 2), None),
])
def test_build_info_says_why_cuda_cannot_run(monkeypatch, fake, want):
    from sae_native import _runtime
    monkeypatch.setattr(_runtime, "_cuda_module", lambda: fake)
    info = sn.build_info()
    assert info["cuda_compiled"] and info["cuda_runtime"] == "13.0"
    if want is None:
        assert info["cuda_error"] is None and info["cuda_devices"] == 2 and info["cuda_driver"] == "13.1"
    else:
        assert want in info["cuda_error"] and info["cuda_devices"] == 0


def test_build_info_keeps_the_import_error(monkeypatch):
    from sae_native import _runtime

    def broken():
        _runtime._CUDA_IMPORT_ERROR = "ImportError: libcuda.so.1: cannot open shared object file"
        return None
    monkeypatch.setattr(_runtime, "_cuda_module", broken)
    info = sn.build_info()
    assert not info["cuda_compiled"]
    assert info["cuda_error"] == ("the CUDA module does not load: ImportError: libcuda.so.1: cannot open shared "
                                  "object file")
