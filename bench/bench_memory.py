"""Peak memory of a capture against a plain forward.

Target: a capture of a few positions costs at most the plain forward's peak + the captured bytes + 5 %.
On CPU two peaks above what the process held once the model was loaded, each configuration in a fresh process:
the live heap (glibc ``mallinfo2``: bytes in use, sampled at the entry and exit of every module of the model, in
every configuration alike) - what the tensors need - and the resident set (``ru_maxrss``), which also counts
memory the allocator keeps after fragmentation. On a GPU: ``torch.cuda.max_memory_allocated`` above the weights.

    python bench/bench_memory.py                   # SmolLM2-135M-Instruct, float32, CPU
    python bench/bench_memory.py --device cuda     # on a GPU (add --gpu-7b for random-init Llama-2-7B shapes)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from common import bench_model, machine, random_batch

MODES = ("plain", "capture_last", "capture_all")


def _points(model) -> list[str]:
    return [f"blocks.{i}.resid_post" for i in range(model.n_layers)]


class _Heap:
    """Peak of glibc's in-use heap bytes, sampled by hooks at every module's entry and exit."""

    def __init__(self, model):
        import ctypes

        class MallInfo2(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]

        self._libc = ctypes.CDLL("libc.so.6")
        self._libc.mallinfo2.restype = MallInfo2
        self.peak = 0
        for mod in model.hf.modules():
            mod.register_forward_pre_hook(self.sample)
            mod.register_forward_hook(self.sample)

    def in_use(self) -> int:
        i = self._libc.mallinfo2()
        return int(i.uordblks + i.hblkhd)

    def sample(self, *_: object) -> None:
        self.peak = max(self.peak, self.in_use())


def measure(args, mode: str) -> dict[str, float]:
    """Run ``mode`` in this process and return its peaks above the loaded model, in bytes."""
    model = bench_model(args.model, args.gpu_7b) if args.device == "cpu" or args.gpu_7b else None
    if model is None:
        import actlab

        model = actlab.load_model(args.model, device=args.device)
    batch = random_batch(model, args.batch, args.seq, torch.Generator().manual_seed(0))
    cuda = model.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        heap = _Heap(model)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        with torch.no_grad():  # a warm-up plain forward, so the heap peak counts the forward, not first-call set-up
            model(**batch, use_cache=False)
        heap.peak = heap_base = heap.in_use()
    captured = 0
    with torch.no_grad():
        for _ in range(args.repeats):
            if mode == "plain":
                model(**batch, use_cache=False)
            else:
                positions = "last" if mode == "capture_last" else "all"
                with model.capture(_points(model), positions=positions, device=model.device) as acts:
                    model(**batch, use_cache=False)
                captured = sum(acts[p].numel() * acts[p].element_size() for p in _points(model))
                del acts
    if cuda:
        torch.cuda.synchronize()
        return {"peak": float(torch.cuda.max_memory_allocated() - base), "captured": float(captured)}
    return {"peak": float(heap.peak - heap_base), "rss": float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                                                * 1024 - base), "captured": float(captured)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gpu-7b", action="store_true")
    ap.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)  # internal: measure one mode and print JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args, args.one)))
        return
    res = {}
    for mode in MODES:
        if args.device == "cpu":  # a fresh process per mode: ru_maxrss is a process-wide high-water mark
            cmd = [sys.executable, __file__, "--one", mode, *sys.argv[1:]]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ)
            res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        else:
            res[mode] = measure(args, mode)
    plain = res["plain"]["peak"]
    cpu = args.device == "cpu"
    print(f"# memory benchmark {time.strftime('%Y-%m-%d')} - {machine()}")
    how = ("live heap (mallinfo2) and resident set (ru_maxrss), a fresh process each" if cpu
           else "max_memory_allocated")
    print(f"model {args.model}, {args.device}, batch {args.batch} x {args.seq} random tokens, peak above the loaded "
          f"model, {how}")
    mib = 2**20
    rss = f"  rss {res['plain']['rss'] / mib:7.1f} MiB" if cpu else ""
    print(f"  plain forward                                  {plain / mib:8.1f} MiB{rss}")
    for mode, what in (("capture_last", "resid_post x all layers, last token"),
                       ("capture_all", "resid_post x all layers, every token")):
        peak, cap = res[mode]["peak"], res[mode]["captured"]
        budget = plain + cap + 0.05 * plain
        rss = f"  rss {res[mode]['rss'] / mib:7.1f} MiB" if cpu else ""
        print(f"  capture {what:38s} {peak / mib:8.1f} MiB{rss}  captured {cap / mib:6.1f} MiB  target <= "
              f"{budget / mib:.1f} MiB: {'met' if peak <= budget else 'NOT met'} ({(peak - plain) / mib:+.1f} MiB)")


if __name__ == "__main__":
    main()
