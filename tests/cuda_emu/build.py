"""Builds the CUDA kernels of cuda/ for the CPU emulator (include/emu_runtime.h) and imports them
as a module with the same functions as ``sae_native._cuda``, so the tests run the very kernel
sources on a machine without a GPU.

The sources are compiled by g++ with the emulator's stand-ins for cuda_runtime.h and mma.h first
on the include path (CUDA's own headers supply the types). Two mechanical rewrites make CUDA
syntax plain C++, and nothing else of the sources changes:
  ``kernel<<<grid, block, smem, stream>>>(args)``  ->  ``::emu::launch(kernel, grid, block, smem, stream)(args)``
  ``extern __shared__ ... T name[];``              ->  ``T* name = (T*)::emu::dynamic_smem();``
(cuda/gemm_tiles.cuh's cp.async PTX has an ``SAE_CUDA_EMULATOR`` branch.) The build is cached
under build/cuda_emu by a hash of every input; it needs g++, pybind11 and CUDA's headers (found
next to nvcc, or through CUDA_HOME).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CUDA_SRC = ROOT / "cuda"
KERNEL_SOURCES = ["encode.cu", "sort_rows.cu", "sparse_rows.cu", "steer.cu", "reference.cu", "device.cu"]
BINDINGS = "bindings.cpp"
TEST_BINDINGS = "test_bindings.cpp"   # its functions join the emulated module (emu_module.cpp)
SHARED = ROOT / "csrc"                # the headers both native modules share

_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^<>;(){}]*>)?)\s*<<<(.*?)>>>", re.S)
_EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w ]+?)\s+(\w+)\[\];")
_MODULE_INIT = "PYBIND11_MODULE(_cuda, m) {"


def cuda_include_dir() -> Optional[Path]:
    """CUDA's include directory (CUDA_HOME, or next to nvcc on PATH), if there is one."""
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        roots.append(str(Path(nvcc).resolve().parents[1]))
    roots.append("/usr/local/cuda")
    for root in roots:
        if root and (Path(root) / "include" / "cuda_bf16.h").is_file():
            return Path(root) / "include"
    return None


def rewrite_kernel_source(text: str) -> str:
    """CUDA launch syntax and dynamic shared memory declarations as plain C++ (see above)."""
    text, launches = _LAUNCH.subn(lambda m: f"::emu::launch({m.group(1)}, {m.group(2)})", text)
    text = _EXTERN_SHARED.sub(lambda m: f"{m.group(1)}* {m.group(2)} = reinterpret_cast<{m.group(1)}*>"
                                        f"(::emu::dynamic_smem());", text)
    if "<<<" in text or "extern __shared__" in text:
        raise RuntimeError("cuda_emu: a launch or shared-memory declaration was not rewritten")
    return text


def rewrite_bindings(text: str) -> str:
    if _MODULE_INIT not in text:
        raise RuntimeError("cuda_emu: the module init of cuda/bindings.cpp was not found")
    decl = "#include <pybind11/pybind11.h>\nvoid emu_register(pybind11::module_& m);\n"
    return decl + text.replace(_MODULE_INIT, _MODULE_INIT + "\n  emu_register(m);", 1)


def _inputs() -> list[Path]:
    files = [CUDA_SRC / n for n in KERNEL_SOURCES + [BINDINGS, TEST_BINDINGS]]
    files += sorted(SHARED.glob("*.h"))
    files += sorted(CUDA_SRC.glob("*.h")) + sorted(CUDA_SRC.glob("*.cuh"))
    files += sorted(HERE.glob("*.cpp")) + sorted(HERE.glob("*.cu")) + sorted(HERE.glob("*.h"))
    files += sorted((HERE / "include").glob("*.h"))
    files.append(Path(__file__))
    return files


def _digest(cuda_inc: Path) -> str:
    h = hashlib.sha256()
    for f in _inputs():
        h.update(f.name.encode())
        h.update(f.read_bytes())
    h.update(str(cuda_inc).encode())
    h.update(sys.version.encode())
    return h.hexdigest()[:16]


def _compile(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"cuda_emu: compile failed: {' '.join(cmd)}\n{proc.stderr[-6000:]}")


def build(out_root: Optional[Path] = None, jobs: int = 2, sanitize: Optional[str] = None) -> Path:
    """Compiles (unless cached) and returns the path of the emulated module. ``sanitize``: a g++
    -fsanitize= value ("address": out-of-bounds reads and writes of the kernels show; the process
    must preload the sanitizer's runtime), default $SAE_NATIVE_CUDA_EMU_SANITIZE."""
    import pybind11

    sanitize = sanitize if sanitize is not None else os.environ.get("SAE_NATIVE_CUDA_EMU_SANITIZE", "")
    extra = [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-g"] if sanitize else []

    cuda_inc = cuda_include_dir()
    if cuda_inc is None:
        raise FileNotFoundError("cuda_emu: CUDA's headers were not found (set CUDA_HOME)")
    out_root = Path(out_root or os.environ.get("SAE_NATIVE_CUDA_EMU_BUILD", ROOT / "build" / "cuda_emu"))
    out = out_root / (_digest(cuda_inc) + (f"-{sanitize}" if sanitize else ""))
    target = out / ("_cuda" + sysconfig.get_config_var("EXT_SUFFIX"))
    if target.is_file():
        return target
    src = out / "src"
    src.mkdir(parents=True, exist_ok=True)
    kernels = [CUDA_SRC / n for n in KERNEL_SOURCES] + [HERE / "selftest.cu"]
    for path in kernels:
        (src / (path.name + ".cpp")).write_text(rewrite_kernel_source(path.read_text()))
    (src / "bindings.cpp").write_text(rewrite_bindings((CUDA_SRC / BINDINGS).read_text()))
    units = [src / (p.name + ".cpp") for p in kernels] + [src / "bindings.cpp", CUDA_SRC / TEST_BINDINGS]
    units += sorted(HERE.glob("*.cpp"))
    flags = ["g++", "-std=c++17", "-O2", "-fPIC", "-w", "-DSAE_CUDA_EMULATOR",
             '-DSAE_NATIVE_CUDA_ARCHS="emulated"', f"-I{HERE / 'include'}", f"-I{CUDA_SRC}", f"-I{SHARED}", f"-I{cuda_inc}",
             f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}"] + extra
    objects = [out / (u.stem + ".o") for u in units]
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        list(pool.map(_compile, [flags + ["-c", str(u), "-o", str(o)] for u, o in zip(units, objects)]))
    tmp = target.with_suffix(".tmp")
    _compile(["g++", "-shared", "-o", str(tmp)] + extra + [str(o) for o in objects])
    os.replace(tmp, target)
    return target


def load(path: Optional[Path] = None):
    """Imports the emulated module (built if needed) under the name ``_cuda``."""
    path = path or build()
    spec = importlib.util.spec_from_file_location("_cuda", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    print(build())
