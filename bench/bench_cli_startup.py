"""How long `actlab --help` and every `actlab CMD --help` take, wall clock, in fresh processes (target: under
0.5 s on the 2-core dev machine), and whether torch was imported to print them (it must not be).

    python bench/bench_cli_startup.py [--repeats 5]

Baseline measured in the same run: a bare `python -c pass` start-up.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = [[], ["info"], ["lens"], ["demo"], ["steer"], ["steer", "extract"], ["steer", "generate"],
            ["steer", "sweep"], ["steer", "mix"], ["steer", "ablate"], ["steer", "refusal"], ["steer", "export-gguf"],
            ["steer", "import-gguf"], ["layers"], ["compare"], ["compare", "vectors"], ["compare", "prompting"],
            ["compare", "curvature"], ["compare", "hessian"], ["project-vocab"], ["diverge"], ["acts", "cache"],
            ["sae", "train"], ["sae", "eval"], ["sae", "overlap"], ["sae", "top-examples"], ["finetune", "rl"],
            ["finetune", "dpo"], ["lfp", "run"], ["lfp", "preset"], ["lfp", "probes"], ["report"]]
PROBE = ("import sys, runpy; sys.argv = ['actlab', *sys.argv[1:], '--help']\n"
         "try:\n    runpy.run_module('actlab', run_name='__main__')\nexcept SystemExit:\n    pass\n"
         "sys.stderr.write('TORCH=' + str('torch' in sys.modules) + '\\n')")


def wall(cmd: list[str], repeats: int) -> tuple[float, str]:
    times, err = [], ""
    for _ in range(repeats):
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        err = p.stderr
    return statistics.median(times), err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    base, _ = wall([sys.executable, "-c", "pass"], args.repeats)
    print(f"python start-up (baseline): {base:.3f} s")
    print(f"{'command':32} {'wall s':>7} {'- baseline':>11} torch imported")
    worst = 0.0
    for c in COMMANDS:
        t, err = wall([sys.executable, "-c", PROBE, *c], args.repeats)
        torch_in = "TORCH=True" in err
        worst = max(worst, t)
        print(f"{'actlab ' + ' '.join(c) + ' --help':32} {t:7.3f} {t - base:11.3f} {'YES' if torch_in else 'no'}")
    print(f"slowest: {worst:.3f} s (target < 0.5 s)")


if __name__ == "__main__":
    main()
