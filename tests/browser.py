"""Headless Chromium for the tests of our HTML pages: the DOM after the browser parsed the page
and ran its scripts. CI installs Chromium from Debian (apt-get install -y chromium) and sets
SAE_NATIVE_REQUIRE_BROWSER=1, so there a missing browser fails instead of skipping."""
import os
import shutil
import subprocess

import pytest


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("SAE_NATIVE_REQUIRE_BROWSER") == "1":
        pytest.fail("SAE_NATIVE_REQUIRE_BROWSER=1 but no chromium on PATH (apt-get install -y chromium)")
    pytest.skip("no headless browser (apt-get install -y chromium)")


def rendered(url: str) -> str:
    """The page's DOM after its scripts ran, from headless Chromium."""
    args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--virtual-time-budget=5000", "--dump-dom", url]
    res = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout
