"""Smoke test of an installed wheel, run outside the source tree (tests/test_wheel.py, and
cibuildwheel's test-command): the package imports from the wheel, its native module loads without
a compiler, and encode / decode / steer / save / load / the CLI agree with the dense formula.

    python tests/wheel_smoke.py [--no-compiler]

``--no-compiler`` also asserts that no C/C++/CUDA compiler is on PATH, so nothing could have been
built at import time.
"""
import os
import shutil
import subprocess
import sys
import tempfile


def main() -> int:
    if "--no-compiler" in sys.argv:
        found = [c for c in ("cc", "gcc", "g++", "c++", "clang", "clang++", "nvcc") if shutil.which(c)]
        assert not found, f"compilers on PATH: {found}"
    import torch
    import sae_native as sn

    here = os.path.dirname(os.path.abspath(sn.__file__))
    assert "site-packages" in here, f"sae_native imported from {here}, not from an installed wheel"
    assert os.path.isfile(os.path.join(here, "py.typed")), "py.typed is missing from the wheel"
    info = sn.build_info()
    assert info["cpu_isa"] in info["cpu_isas_supported"], info

    g = torch.Generator().manual_seed(0)
    d_in, d_sae, k = 37, 101, 5
    W_enc, W_dec = torch.randn(d_in, d_sae, generator=g), torch.randn(d_sae, d_in, generator=g)
    b_enc, b_dec = torch.randn(d_sae, generator=g), torch.randn(d_in, generator=g)
    sae = sn.SAE(W_enc, b_enc, W_dec, b_dec, activation="topk", k=k)
    x = torch.randn(13, d_in, generator=g)
    codes = sae.encode(x)
    pre = ((x - b_dec).double() @ W_enc.double() + b_enc.double())
    top = torch.topk(pre, k, dim=-1)
    assert torch.equal(codes.indices, top.indices), "encode picked other latents than the dense formula"
    torch.testing.assert_close(codes.values.double(), torch.relu(top.values), rtol=1e-5, atol=1e-5)
    dense = torch.zeros(13, d_sae, dtype=torch.float64).scatter_(-1, top.indices, torch.relu(top.values))
    torch.testing.assert_close(sae.decode(codes).double(), dense @ W_dec.double() + b_dec.double(), rtol=1e-4,
                               atol=1e-4)
    torch.testing.assert_close(sae.steer(x, {}), x)
    with tempfile.TemporaryDirectory() as tmp:
        sae.save(os.path.join(tmp, "sae"))
        again = sn.load(os.path.join(tmp, "sae"))
        assert torch.equal(again.encode(x).indices, codes.indices)
    exe = shutil.which("sae-native")
    assert exe, "the sae-native command was not installed"
    out = subprocess.run([exe, "check", "--shape", "16,32,96,4", "--repeats", "1"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    print(f"wheel smoke: ok ({info['version']}, {info['cpu_isa']}, from {here})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
