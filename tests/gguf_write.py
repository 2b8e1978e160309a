"""Writing a (tiny, float32) Hugging Face model as a GGUF file, the way llama.cpp's convert_hf_to_gguf.py lays it
out, so that tests can load GGUF files of architectures no shared file covers through actlab's real GGUF path.

Tensor names come from the gguf package's own name map (``transformers``' reader inverts the same map); the
metadata keys from transformers' GGUF config mapping; the tokenizer fields are copied from a real GGUF file. Where
llama.cpp's converter changes a tensor (and transformers' reader undoes it), the change is made here too:
Nemotron's norms are stored as ``weight + 1``; BLOOM's fused query/key/value rows, interleaved per head in the
checkpoint, are stored as all queries, then keys, then values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

GGUF_ARCH = {"qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe"}


def _to_gguf_layout(model_type: str, gguf_name: str, w: np.ndarray, config) -> np.ndarray:
    if model_type == "nemotron" and gguf_name.endswith("norm.weight"):
        return w + 1
    if model_type == "bloom" and "attn_qkv" in gguf_name:
        n_head, d = config.n_head, config.hidden_size
        # checkpoint rows: [head, (q|k|v), head_dim]; GGUF rows: [(q|k|v), head, head_dim]
        shaped = w.reshape(n_head, 3, d // n_head, *w.shape[1:])
        return np.ascontiguousarray(np.swapaxes(shaped, 0, 1)).reshape(w.shape)
    return w


def write_gguf(hf_model: torch.nn.Module, path: Path, tokenizer_from: Path) -> Path:
    """``hf_model`` as a GGUF file at ``path`` with the tokenizer of the GGUF file ``tokenizer_from`` (the model's
    vocabulary must be that tokenizer's size)."""
    import gguf
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor, get_gguf_hf_weights_map

    config = hf_model.config
    mt = config.model_type
    arch = GGUF_ARCH.get(mt, mt)
    names = {hf: g for g, hf in get_gguf_hf_weights_map(hf_model, TensorProcessor()).items()}
    writer = gguf.GGUFWriter(str(path), arch)
    for key, attr in GGUF_CONFIG_MAPPING[mt].items():
        value = getattr(config, attr, None) if attr else None
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            writer.add_uint32(f"{arch}.{key}", value)
        elif isinstance(value, float):
            writer.add_float32(f"{arch}.{key}", value)
    reader = gguf.GGUFReader(str(tokenizer_from))
    for name, field in reader.fields.items():
        if name.startswith("tokenizer."):
            array = field.types[0] == gguf.GGUFValueType.ARRAY
            writer.add_key_value(name, field.contents(), field.types[0],
                                 sub_type=field.types[-1] if array else None)
    written = set()
    for name, t in hf_model.state_dict().items():
        g = names.get(name)
        if g is None:
            raise KeyError(f"{mt}: no GGUF name for {name}")
        if g in written:  # tied weights
            continue
        written.add(g)
        writer.add_tensor(g, _to_gguf_layout(mt, g, t.detach().float().numpy(), config))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
