"""Jobs: one Python call per CLI command. Each job owns its run folder (:class:`actlab.runs.Run`: config,
versions, seed, interventions, start/end, status), computes with the feature packages, writes the data
files and draws the figures through :mod:`actlab.report`. The CLI only parses flags, loads the model with a
spinner and prints a summary, so a notebook or the playground gets exactly what the CLI does::

    from actlab import jobs
    res = jobs.sweep("HuggingFaceTB/SmolLM2-135M-Instruct", "syco.safetensors", "test_ab.json", "runs/sweep",
                     layers="8-12:2", multipliers=[-2, 0, 2])
"""

from .compare import curvature, diverge, hessian, layer_selection, prompting, vector_comparison, vocab_projection
from .explain import explain_features
from .finetune import finetune_dpo, finetune_rl
from .lenses import lens
from .sae import cache_acts, evaluate_saes, sae_overlap, top_examples, train_saes
from .steering import ablate_weights, extract_vector, generate, mix_generate, refusal, sweep

__all__ = [
    "ablate_weights", "cache_acts", "curvature", "diverge", "evaluate_saes", "explain_features", "extract_vector",
    "finetune_dpo",
    "finetune_rl", "generate", "hessian", "layer_selection", "lens", "mix_generate", "prompting", "refusal",
    "sae_overlap", "sweep", "top_examples", "train_saes", "vector_comparison", "vocab_projection",
]
