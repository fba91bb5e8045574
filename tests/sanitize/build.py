"""Builds the CPU module sae_native._C with AddressSanitizer and UBSan, for tests/sanitize/run.py.

The sources and per-ISA flags are read from CMakeLists.txt, so this build compiles exactly what
the package does, with ``-fsanitize=address,undefined`` added: a kernel that reads or writes past a
tensor (torch's CPU tensors get redzones) or hits undefined behaviour aborts with a report. The
build is cached under build/sanitize by a hash of its inputs.

``planted=True`` builds a copy with one deliberate bug, the decode's index check widened by one,
so the tests can show that the sanitizer catches an out-of-bounds read of our own kernels.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g"]
# The planted bug: accumulate_row (the generic decode, float64) reads row `rows` too.
PLANT = ("if (f < 0 || f >= w.rows || v == T(0)) continue;", "if (f < 0 || f > w.rows || v == T(0)) continue;")


def sources() -> Dict[str, List[str]]:
    """{source file name: its extra compile flags}, as CMakeLists.txt builds _C."""
    text = (ROOT / "CMakeLists.txt").read_text()
    block = re.search(r"pybind11_add_module\(_C(.*?)\)", text, re.S).group(1)
    files = re.findall(r"csrc/(\w+\.cpp)", block)
    files += re.findall(r"csrc/(\w+\.cpp)", re.search(r"target_sources\(_C PRIVATE([^)]*)\)", text).group(1))
    flags = {name: opts.split(";") for name, opts in
             re.findall(r'set_source_files_properties\(csrc/(\w+\.cpp) PROPERTIES\s*(?:#[^\n]*\n\s*)*'
                        r'COMPILE_OPTIONS "([^"]*)"', text)}
    return {f: flags.get(f, []) for f in files}


def _digest(planted: bool) -> str:
    h = hashlib.sha256()
    for f in sorted(CSRC.iterdir()):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    h.update((ROOT / "CMakeLists.txt").read_bytes())
    h.update(Path(__file__).read_bytes())
    h.update(f"{sys.version}{planted}".encode())
    return h.hexdigest()[:16]


def _compile(cmd: List[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"sanitize: compile failed: {' '.join(cmd)}\n{proc.stderr[-6000:]}")


def build(planted: bool = False, out_root: Optional[Path] = None, jobs: int = 2) -> Path:
    """Compiles (unless cached) and returns the path of the sanitized _C module."""
    import pybind11

    out = Path(out_root or ROOT / "build" / "sanitize") / (_digest(planted) + ("-planted" if planted else ""))
    target = out / ("_C" + sysconfig.get_config_var("EXT_SUFFIX"))
    if target.is_file():
        return target
    src = out / "src"
    src.mkdir(parents=True, exist_ok=True)
    for f in CSRC.iterdir():
        text = f.read_text()
        if planted and f.name == "sparse_rows.h":
            if PLANT[0] not in text:
                raise RuntimeError("sanitize: the planted bug's line is no longer in csrc/sparse_rows.h")
            text = text.replace(PLANT[0], PLANT[1])
        (src / f.name).write_text(text)
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    base = ["g++", "-std=c++17", "-O1", "-fPIC", "-w", f'-DSAE_NATIVE_VERSION="{version}"', f"-I{src}",
            f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}"] + SANITIZE
    units = sources()
    if re.search(r"x86_64|AMD64", os.uname().machine, re.I):
        base.append("-DSAE_NATIVE_X86_KERNELS=1")
    else:
        units = {f: fl for f, fl in units.items() if not fl}
    objects = [out / (Path(f).stem + ".o") for f in units]
    cmds = [base + flags + ["-c", str(src / f), "-o", str(o)] for (f, flags), o in zip(units.items(), objects)]
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        list(pool.map(_compile, cmds))
    tmp = target.with_suffix(".tmp")
    _compile(["g++", "-shared", "-o", str(tmp)] + SANITIZE + [str(o) for o in objects] + ["-lpthread"])
    os.replace(tmp, target)
    return target


if __name__ == "__main__":
    print(build(planted="--planted" in sys.argv))
