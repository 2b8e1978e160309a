"""Tiny random-init models built from config, one per supported family (no downloads)."""

from __future__ import annotations

import torch
import transformers as tf

V = 96
_COMMON = dict(vocab_size=V, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_LLAMA = dict(_COMMON, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=64, max_position_embeddings=64)


def _configs() -> dict[str, tf.PretrainedConfig]:
    return {
        "llama": tf.LlamaConfig(**_LLAMA),
        "mistral": tf.MistralConfig(**_LLAMA),
        "qwen2": tf.Qwen2Config(**_LLAMA),
        "qwen3": tf.Qwen3Config(**_LLAMA, head_dim=8),
        "gemma": tf.GemmaConfig(**_LLAMA, head_dim=8),
        "gemma2": tf.Gemma2Config(**_LLAMA, head_dim=8, final_logit_softcapping=3.0),
        "gemma3_text": tf.Gemma3TextConfig(**_LLAMA, head_dim=8, final_logit_softcapping=3.0),
        "phi3": tf.Phi3Config(**_LLAMA),
        "gpt2": tf.GPT2Config(vocab_size=V, n_embd=32, n_layer=3, n_head=4, n_positions=64, bos_token_id=1,
                              eos_token_id=2),
        "gpt_neox": tf.GPTNeoXConfig(**{k: v for k, v in _LLAMA.items() if k != "num_key_value_heads"}),
        "gpt_neox_seq": tf.GPTNeoXConfig(**{k: v for k, v in _LLAMA.items() if k != "num_key_value_heads"},
                                         use_parallel_residual=False),
        "gpt_neo": tf.GPTNeoConfig(vocab_size=V, hidden_size=32, num_layers=3, num_heads=4,
                                   attention_types=[[["global", "local"], 1], [["global"], 1]],
                                   max_position_embeddings=64, window_size=8, bos_token_id=1, eos_token_id=2),
        "gptj": tf.GPTJConfig(vocab_size=V, n_embd=32, n_layer=3, n_head=4, rotary_dim=4, n_positions=64,
                              bos_token_id=1, eos_token_id=2),
        "opt": tf.OPTConfig(**_COMMON, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, ffn_dim=64,
                            max_position_embeddings=64, word_embed_proj_dim=32),
    }


FAMILIES = list(_configs())


def tiny_hf_model(family: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A random-init model of one family; weights scaled up so layers differ visibly."""
    cfg = _configs()[family]
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
            elif "norm" in name or "ln" in name:
                p.normal_(0.5 if "gemma" in family else 1.0, 0.1) if "weight" in name else p.normal_(0, 0.1)
            else:
                p.normal_(0.0, 0.1)
    return model.to(dtype).eval()


def tiny_model(family: str, seed: int = 0, **kw):
    """An actlab Model around a tiny HF model (no tokenizer: feed token ids)."""
    import actlab

    return actlab.wrap(tiny_hf_model(family, seed), None, name=f"tiny-{family}", **kw)
