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

# model type -> llama.cpp's architecture name (transformers maps them back). Mistral is llama.cpp's "llama"; the
# file is named as llama.cpp's converter names it ("Mistral 7B ..."), which transformers reads as Llama (only a
# general.name of exactly "mistral" would make it Mistral, and then the gguf package has no "mistral" tensor map)
GGUF_ARCH = {"qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe", "gemma3_text": "gemma3", "gemma4_text": "gemma4",
             "gpt_oss": "gpt-oss", "minimax_m2": "minimax-m2", "mistral": "llama"}
# model type -> the key of transformers' GGUF config mapping, where it differs
CONFIG_KEY = {"gemma3_text": "gemma3", "gemma4_text": "gemma4"}
# GPT-2's Conv1D weights are stored transposed (llama.cpp's converter transposes them; the reader transposes back)
GPT2_TRANSPOSED = ("attn_qkv.weight", "ffn_down.weight", "ffn_up.weight", "attn_output.weight")


def _llama_cpp_only(model_type: str, hf_name: str, t: torch.Tensor) -> dict[str, np.ndarray]:
    """Tensors llama.cpp's converter writes under names transformers' reader does not map back (gpt-oss's
    experts: the fused, interleaved gate/up projection split into stacked gate and up tensors, each expert's
    matrices transposed to llama.cpp's [out, in] order, the biases beside them)."""
    w = t.detach().float().numpy()
    if model_type != "gpt_oss" or ".mlp.experts." not in hf_name:
        return {}
    bid = hf_name.split(".layers.")[1].split(".")[0]
    if hf_name.endswith("gate_up_proj"):  # [experts, d_model, 2 x inner], gate and up interleaved
        return {f"blk.{bid}.ffn_gate_exps.weight": np.ascontiguousarray(w[:, :, ::2].swapaxes(1, 2)),
                f"blk.{bid}.ffn_up_exps.weight": np.ascontiguousarray(w[:, :, 1::2].swapaxes(1, 2))}
    if hf_name.endswith("gate_up_proj_bias"):
        return {f"blk.{bid}.ffn_gate_exps.bias": np.ascontiguousarray(w[:, ::2]),
                f"blk.{bid}.ffn_up_exps.bias": np.ascontiguousarray(w[:, 1::2])}
    if hf_name.endswith("down_proj_bias"):
        return {f"blk.{bid}.ffn_down_exps.bias": w}
    return {}


def _rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's query/key row order for Llama-style rotary embeddings (pairs interleaved per head); the
    reader's ``_reverse_permute_weights`` undoes it."""
    return np.ascontiguousarray(w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
                                .swapaxes(1, 2).reshape(w.shape))


def _to_gguf_layout(model_type: str, gguf_name: str, w: np.ndarray, config) -> np.ndarray:
    if ".ffn_gate_exps." in gguf_name or ".ffn_up_exps." in gguf_name:  # fused [experts, gate | up, d_model]
        half = w.shape[1] // 2
        return np.ascontiguousarray(w[:, :half] if ".ffn_gate_exps." in gguf_name else w[:, half:])
    if "ffn_gate_inp_shexp" in gguf_name:  # the shared expert's gate: a vector in GGUF, (1, d_model) in HF
        return np.ascontiguousarray(w.reshape(-1))
    if model_type in ("nemotron", "gemma2", "gemma3_text") and gguf_name.endswith("norm.weight"):
        return w + 1  # llama.cpp stores these norms' (1 + weight) scale
    if model_type == "gpt_oss" and gguf_name.endswith("ffn_down_exps.weight"):  # [experts, inner, d_model]
        return np.ascontiguousarray(w.swapaxes(1, 2))
    if model_type == "gpt2" and gguf_name.endswith(GPT2_TRANSPOSED):
        return np.ascontiguousarray(w.T)
    if model_type in ("llama", "mistral") and (".attn_q." in gguf_name or ".attn_k." in gguf_name):
        heads = config.num_attention_heads if ".attn_q." in gguf_name else config.num_key_value_heads
        return _rope_permute(w, heads)
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
    as_type = "llama" if mt == "mistral" else None  # the gguf package's tensor map for llama.cpp's "llama"
    if "processor" in inspect.signature(get_gguf_hf_weights_map).parameters:  # transformers 5
        mapping = get_gguf_hf_weights_map(hf_model, TENSOR_PROCESSORS.get(arch, TensorProcessor)(), model_type=as_type)
    else:
        mapping = get_gguf_hf_weights_map(hf_model, model_type=as_type)
    names: dict[str, list[str]] = {}
    for g, hf in mapping.items():
        names.setdefault(hf, []).append(g)  # a fused expert tensor is two GGUF tensors (gate, up)
    writer = gguf.GGUFWriter(str(path), arch)
    if mt == "mistral":
        writer.add_name("Mistral Tiny")
    for key, attr in GGUF_CONFIG_MAPPING[CONFIG_KEY.get(mt, mt)].items():
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
    tied = hf_model.get_output_embeddings().weight is hf_model.get_input_embeddings().weight
    for name, t in hf_model.state_dict().items():
        if tied and name == "lm_head.weight":  # llama.cpp writes no output tensor for tied embeddings
            continue
        if name not in names:
            extra = _llama_cpp_only(mt, name, t)
            if not extra:
                raise KeyError(f"{mt}: no GGUF name for {name}")
            for g, w in extra.items():
                writer.add_tensor(g, w)
            continue
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
