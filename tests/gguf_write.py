"""Writing a (tiny, float32) Hugging Face model as a GGUF file, the way llama.cpp's convert_hf_to_gguf.py lays it
out, so that tests can load GGUF files of architectures no shared file covers through actlab's real GGUF path.

Tensor names come from the gguf package's own name map (``transformers``' reader inverts the same map); the
metadata keys from transformers' GGUF config mapping; the tokenizer fields are copied from a real GGUF file. Where
llama.cpp's converter changes a tensor (and transformers' reader undoes it), the change is made here too:
Nemotron's norms are stored as ``weight + 1``; BLOOM's fused query/key/value rows, interleaved per head in the
checkpoint, are stored as all queries, then keys, then values; a mixture of experts' fused gate/up tensor is
stored as two stacked tensors (``ffn_gate_exps``, ``ffn_up_exps``) and its shared expert's gate as a vector."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch

GGUF_ARCH = {"qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe"}


def _to_gguf_layout(model_type: str, gguf_name: str, w: np.ndarray, config) -> np.ndarray:
    if ".ffn_gate_exps." in gguf_name or ".ffn_up_exps." in gguf_name:  # fused [experts, gate | up, d_model]
        half = w.shape[1] // 2
        return np.ascontiguousarray(w[:, :half] if ".ffn_gate_exps." in gguf_name else w[:, half:])
    if "ffn_gate_inp_shexp" in gguf_name:  # the shared expert's gate: a vector in GGUF, (1, d_model) in HF
        return np.ascontiguousarray(w.reshape(-1))
    if model_type == "nemotron" and gguf_name.endswith("norm.weight"):
        return w + 1
    if model_type == "bloom" and "attn_qkv" in gguf_name:
        n_head, d = config.n_head, config.hidden_size
        # checkpoint rows: [head, (q|k|v), head_dim]; GGUF rows: [(q|k|v), head, head_dim]
        shaped = w.reshape(n_head, 3, d // n_head, *w.shape[1:])
        return np.ascontiguousarray(np.swapaxes(shaped, 0, 1)).reshape(w.shape)
    return w


@functools.lru_cache(maxsize=2)
def _tokenizer_fields(path: str) -> tuple[dict[str, Any], dict[str, list]]:
    """The ``tokenizer.*`` fields of a GGUF file and their value types (read once per file: seconds)."""
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {n: f for n, f in reader.fields.items() if n.startswith("tokenizer.")}
    return {n: f.contents() for n, f in fields.items()}, {n: list(f.types) for n, f in fields.items()}


def write_gguf(hf_model: torch.nn.Module, path: Path, tokenizer_from: Path, vocab: int | None = None) -> Path:
    """``hf_model`` as a GGUF file at ``path`` with the tokenizer of the GGUF file ``tokenizer_from`` (the model's
    vocabulary must be that tokenizer's size), or its first ``vocab`` tokens and the BPE merges among them
    (a small real tokenizer: reading a 49,152-token vocabulary from GGUF metadata takes seconds per read)."""
    import gguf
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

    config = hf_model.config
    mt = config.model_type
    arch = GGUF_ARCH.get(mt, mt)
    if "processor" in inspect.signature(get_gguf_hf_weights_map).parameters:  # transformers 5
        mapping = get_gguf_hf_weights_map(hf_model, TENSOR_PROCESSORS.get(arch, TensorProcessor)())
    else:
        mapping = get_gguf_hf_weights_map(hf_model)
    names: dict[str, list[str]] = {}
    for g, hf in mapping.items():
        names.setdefault(hf, []).append(g)  # a fused expert tensor is two GGUF tensors (gate, up)
    writer = gguf.GGUFWriter(str(path), arch)
    for key, attr in GGUF_CONFIG_MAPPING[mt].items():
        value = getattr(config, attr, None) if attr else None
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            writer.add_uint32(f"{arch}.{key}", value)
        elif isinstance(value, float):
            writer.add_float32(f"{arch}.{key}", value)
    fields, types = _tokenizer_fields(str(tokenizer_from))
    fields = dict(fields)
    if vocab is not None:
        kept = set(fields["tokenizer.ggml.tokens"][:vocab])
        fields["tokenizer.ggml.tokens"] = fields["tokenizer.ggml.tokens"][:vocab]
        fields["tokenizer.ggml.token_type"] = fields["tokenizer.ggml.token_type"][:vocab]
        fields["tokenizer.ggml.merges"] = [m for m in fields["tokenizer.ggml.merges"]
                                           if set(m.split(" ")) <= kept and m.replace(" ", "") in kept]
    for name, value in fields.items():
        kind = types[name]
        array = kind[0] == gguf.GGUFValueType.ARRAY
        writer.add_key_value(name, value, kind[0], sub_type=kind[-1] if array else None)
    written = set()
    for name, t in hf_model.state_dict().items():
        if name not in names:
            raise KeyError(f"{mt}: no GGUF name for {name}")
        for g in names[name]:
            if g in written:  # tied weights
                continue
            written.add(g)
            writer.add_tensor(g, _to_gguf_layout(mt, g, t.detach().float().numpy(), config))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
