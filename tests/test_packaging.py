"""The built wheel installs electra_fast.kernels inside electra_fast, never a top-level `kernels`."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_kernels_under_electra_fast_and_imports_elsewhere(tmp_path):
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir),
         str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = wheel_dir.glob("electra_fast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "electra_fast/kernels/philox.py" in names
    assert not any(name.startswith("kernels/") for name in names)
    assert any(name.endswith("entry_points.txt") for name in names)

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = dict(os.environ, PYTHONPATH=str(site))
    code = "import electra_fast, electra_fast.kernels.philox as p; print(electra_fast.__file__); print(p.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert all(line.startswith(str(site)) for line in out.stdout.split())
