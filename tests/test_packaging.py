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
    subpackages = {path.relative_to(ROOT).as_posix() for path in (ROOT / "electra_fast").glob("*/__init__.py")}
    assert subpackages and subpackages <= set(names), subpackages - set(names)  # setup.py lists every one
    assert "electra_fast/kernels/tile_table.json" in names and "electra_fast/kernels/tile_candidates.json" in names
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


def test_repository_root_does_not_shadow_hugging_face_kernels():
    """`python`, notebooks and `python -m pytest` put the current directory first on sys.path. transformers
    (5.25 on) imports Hugging Face's `kernels` when it starts; the repository's kernels/ folder must not be
    what it finds there (docs/design.md §2)."""
    code = "\n".join([
        "import importlib.util, sys",
        "import transformers",
        "from transformers import ElectraForSequenceClassification",
        "if importlib.util.find_spec('transformers.integrations.hub_kernels') is not None:",
        "    import transformers.integrations.hub_kernels",
        "import electra_fast, electra_fast.kernels.registry",
        "found = sys.modules.get('kernels')",
        "print(getattr(found, '__file__', None))",
        "print(electra_fast.kernels.registry.__file__)",
    ])
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    hub_kernels, registry = out.stdout.split()
    assert not hub_kernels.startswith(str(ROOT / "kernels")), hub_kernels
    assert Path(registry).resolve() == ROOT / "kernels" / "registry.py"
