"""Every registered kernel configuration compiles for sm_80 and sm_90a without spills (docs/design.md §6).

Runs ``python -m electra_fast.aot`` in a subprocess with TRITON_INTERPRET unset, since the interpreter
replaces the JIT functions in this process.
"""

import json
import os
import subprocess
import sys


def test_all_kernels_compile_for_sm80_and_sm90a_without_spills(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    report = tmp_path / "aot.json"
    result = subprocess.run(
        [sys.executable, "-m", "electra_fast.aot", "--json", str(report)], env=env, capture_output=True, text=True,
        timeout=900,
    )
    print(result.stdout)
    rows = json.loads(report.read_text()) if report.exists() else []
    errors = [row for row in rows if "error" in row]
    spills = [row for row in rows if row.get("spills")]
    assert result.returncode == 0 and not errors and not spills, result.stdout + result.stderr
    archs = {row["arch"] for row in rows}
    assert archs == {"sm_80", "sm_90a"}
    assert any(row["kernel"].startswith("philox_draws_kernel") for row in rows)
