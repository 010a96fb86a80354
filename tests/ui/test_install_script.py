"""scripts/install-chromium.sh (`make browser`): nothing to do when the browser is there; a clear failure,
never a hang or a silent pass, when it cannot install it."""

import os
import subprocess
from pathlib import Path

import pytest

from tests.test_demo import ROOT

SCRIPT = ROOT / "scripts" / "install-chromium.sh"


def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def test_present_browser_is_left_alone(tmp_path: Path) -> None:
    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    if not os.access("/usr/bin/chromedriver", os.X_OK):
        pytest.skip("chromium-driver is not installed (make browser installs it)")
    done = run({"PATH": "/nonexistent", "BERTH_CHROMIUM": str(fake)})
    assert done.returncode == 0 and done.stdout == done.stderr == ""


def test_without_apt_get_it_fails_and_says_what_to_do() -> None:
    done = run({"PATH": "/nonexistent", "BERTH_CHROMIUM": "/nonexistent/chromium"})
    assert done.returncode == 1
    assert "apt-get is not available" in done.stderr and "apt-get install -y chromium chromium-driver" in done.stderr
