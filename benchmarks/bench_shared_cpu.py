"""Training steps on a CPU that another process is using: how the OpenMP settings degrade.

A pre-training step on the CPU runs many short parallel regions (torch's GEMMs, the compiled C++ loops of the
CPU path). OpenMP's default makes a thread that finishes its part spin, waiting for the others; when one
core is also running another busy process, every region waits for the thread that shares that core, which
the kernel runs only part of the time. This runs ``bench_step.py`` (one whole step: forward, backward, clip,
AdamW; electra-fast and the hand-written Hugging Face recipe, tiny preset, batch 16 x 128) in fresh processes
under each setting, on an idle machine and with ``python -c "while True: pass"`` pinned to core 0, the
settings taking turns round after round so that the machine's other load falls on all of them alike.

    python benchmarks/bench_shared_cpu.py [--rounds 2] [--steps 6] [--out benchmarks/results/DIR]

It prints a table of the median seconds per step and the busy/idle ratio, with the load average before and
after, and writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETUPS = ("electra_fast", "hf_recipe")
# name: (environment, whether electra_fast is imported before torch, as the electra-fast command does)
SETTINGS = {
    "torch's default": ({}, False),
    "electra_fast first": ({}, True),
    "OMP_WAIT_POLICY=PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, False),
    "OMP_NUM_THREADS=1": ({"OMP_NUM_THREADS": "1"}, False),
    "GOMP_SPINCOUNT=1000": ({"GOMP_SPINCOUNT": "1000"}, False),
    "GOMP_SPINCOUNT=3000": ({"GOMP_SPINCOUNT": "3000"}, False),
    "GOMP_SPINCOUNT=10000": ({"GOMP_SPINCOUNT": "10000"}, False),
    "GOMP_SPINCOUNT=100000": ({"GOMP_SPINCOUNT": "100000"}, False),
}
BASELINE = "torch's default"


def seconds_per_step(setup: str, setting: str, steps: int) -> float:
    environment, electra_fast_first = SETTINGS[setting]
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OMP_", "GOMP_"))}
    env.update(environment)
    script = [str(HERE / "bench_step.py")]
    if electra_fast_first:
        script = ["-c", "import electra_fast, runpy, sys; sys.argv = sys.argv[1:]; "
                  "runpy.run_path(sys.argv[0], run_name='__main__')", *script]
    result = subprocess.run([sys.executable, *script, "--variant", setup, "--preset", "tiny", "--steps", str(steps)],
                            env=env, capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds_per_step"]


def busy_core() -> subprocess.Popen:
    command = [sys.executable, "-c", "while True: pass"]
    return subprocess.Popen(["taskset", "-c", "0", *command] if os.path.exists("/usr/bin/taskset") else command)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path, help="directory for results.json")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated, of: " + ", ".join(SETTINGS))
    parser.add_argument("--setups", default=",".join(SETUPS), help="comma-separated, of: " + ", ".join(SETUPS))
    args = parser.parse_args(argv)
    settings, setups = args.settings.split(","), args.setups.split(",")
    if BASELINE not in settings:
        settings.insert(0, BASELINE)
    print(f"{os.cpu_count()} cores; load average before: {os.getloadavg()}", flush=True)
    for setup in setups:  # compile the CPU path's loops once (cached), outside the timings
        seconds_per_step(setup, BASELINE, 2)
    times: dict = {}
    for round_number in range(args.rounds):
        for busy in (False, True):
            for setup in setups:
                for setting in settings:
                    other = busy_core() if busy else None
                    try:
                        seconds = seconds_per_step(setup, setting, args.steps)
                    finally:
                        if other is not None:
                            other.kill()
                            other.wait()
                    times.setdefault((setup, setting, busy), []).append(seconds)
                    print(f"round {round_number} {setup:12s} {setting:24s} {'busy' if busy else 'idle'} "
                          f"{seconds:.3f} s/step (load {os.getloadavg()[0]:.2f})", flush=True)
    load_after = os.getloadavg()
    rows = []
    print(f"\n{'setup':12s} {'setting':24s} {'idle s/step':>12s} {'busy s/step':>12s} {'busy/idle':>9s} "
          f"{'busy/default idle':>17s}  (default: {BASELINE})")
    for setup in setups:
        default_idle = statistics.median(times[(setup, BASELINE, False)])
        for setting in settings:
            idle, busy = (statistics.median(times[(setup, setting, flag)]) for flag in (False, True))
            rows.append({"setup": setup, "setting": setting, "idle_seconds": idle, "busy_seconds": busy,
                         "idle_all": times[(setup, setting, False)], "busy_all": times[(setup, setting, True)]})
            print(f"{setup:12s} {setting:24s} {idle:12.3f} {busy:12.3f} {busy / idle:9.2f} "
                  f"{busy / default_idle:17.2f}")
    print(f"load average after: {load_after}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps({
            "cores": os.cpu_count(), "load_average_after": load_after, "rounds": args.rounds, "steps": args.steps,
            "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
