"""A GGUF file's first load (de-quantized by transformers; later loads read actlab's safetensors cache), with the
file's metadata parsed once (`gguf.shared_reads`) against the baseline of the same load without it, in fresh
processes, interleaved; the two loads' logits must be equal.

    python bench/bench_gguf_load.py [--gguf FILE] [--repeats 3]

Default file: SmolLM2-135M-Instruct Q4_1 in ACTLAB_MODELS_DIR (49,152-token vocabulary, 30 layers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

PROBE = r"""
import contextlib, json, sys, time
import torch
import actlab
from actlab.models import gguf as g
if sys.argv[2] == "baseline":
    g.shared_reads = contextlib.nullcontext
t0 = time.perf_counter()
m = actlab.load_model(sys.argv[1], cache_gguf=False, validate=False)
dt = time.perf_counter() - t0
with torch.no_grad():
    logits = m.hf(input_ids=torch.tensor([[1, 2, 3, 4, 5]])).logits
print(json.dumps({"seconds": dt, "sum": float(logits.double().sum()), "max": float(logits.abs().max())}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = Path(os.environ.get("ACTLAB_MODELS_DIR", "../shared/models"))
    ap.add_argument("--gguf", default=str(root / "smollm2-135m-instruct-q4_1" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from common import machine

    times: dict[str, list[float]] = {"baseline": [], "shared": []}
    outs: dict[str, dict] = {}
    for _ in range(args.repeats):
        for mode in ("baseline", "shared"):  # interleaved: the machine's load drifts alike for both
            p = subprocess.run([sys.executable, "-c", PROBE, args.gguf, mode], capture_output=True, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if p.returncode:
                sys.exit(f"{mode} load failed:\n{p.stderr[-2000:]}")
            outs[mode] = json.loads(p.stdout.strip().splitlines()[-1])
            times[mode].append(outs[mode]["seconds"])
    same = outs["baseline"]["sum"] == outs["shared"]["sum"] and outs["baseline"]["max"] == outs["shared"]["max"]
    print(f"machine: {machine()}")
    print(f"file: {args.gguf}; median of {args.repeats} interleaved fresh-process loads (cache off, no validation)")
    base = statistics.median(times["baseline"])
    for mode, label in (("baseline", "transformers' reads (baseline)"), ("shared", "metadata parsed once")):
        med = statistics.median(times[mode])
        print(f"  {label:34s} {med:7.2f} s  {med / base:.3f}x  (runs: {', '.join(f'{t:.1f}' for t in times[mode])})")
    print(f"  logits equal: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
