"""Shared helpers for benchmarks: timing by interleaved repeats, machine description, model choice."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), {gpu}"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, alternating them so drift hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def llama2_7b_random(dtype: torch.dtype = torch.bfloat16, device: str = "cuda", n_layers: int = 32):
    """A random-init model with Llama-2-7B shapes (for GPU benchmarks; no download)."""
    import transformers as tf

    import actlab

    cfg = tf.LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=n_layers,
                         num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
    with torch.device(device):
        hf = tf.AutoModelForCausalLM.from_config(cfg, dtype=dtype) if int(tf.__version__.split(".")[0]) >= 5 \
            else tf.AutoModelForCausalLM.from_config(cfg, torch_dtype=dtype)
    return actlab.wrap(hf.eval(), None, name="random-llama2-7b-shapes")


def bench_model(name: str, gpu_7b: bool):
    """The model a benchmark runs on: ``name`` in float32 on the CPU, or random Llama-2-7B shapes on the GPU."""
    import actlab

    return llama2_7b_random() if gpu_7b else actlab.load_model(name, dtype="float32", device="cpu")


def random_batch(model, batch: int, seq: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random token ids away from the special tokens at both ends of the vocabulary, no padding."""
    ids = torch.randint(100, model.vocab_size - 100, (batch, seq), generator=generator).to(model.device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
