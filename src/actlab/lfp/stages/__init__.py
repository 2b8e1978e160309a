"""The LFP pipeline's stages, in order, and what each depends on (a light module: the CLI lists them without
importing torch). The stage functions live beside: :mod:`.models` (finetune, divergence, sae), :mod:`.probing`
(triples, deltas, probes), :mod:`.agreement`, :mod:`.features`.

Each stage's resume settings (:func:`stage_settings`) are the config fields it reads plus the settings of the
stages it reads from, so changing, say, the triples source invalidates triples, deltas, probes, agreement and
features but leaves the fine-tuned model and its dictionaries in place."""

from __future__ import annotations

from typing import Any

STAGES = ("finetune", "divergence", "sae", "triples", "deltas", "probes", "agreement", "features", "report")

# stage -> (config fields it reads, stages whose outputs it reads)
INPUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "finetune": (("base_model", "tuned_model", "finetune", "data", "dtype", "seed"), ()),
    "divergence": (("top_k_layers", "layers"), ("finetune",)),
    "sae": (("sae", "data"), ("divergence",)),
    "triples": (("task", "triples", "data"), ()),
    "deltas": (("dictionary", "delta_position", "delta_reduce"), ("sae", "triples")),
    "probes": (("task", "probe_test_fraction", "probe_alpha", "seed"), ("deltas",)),
    "agreement": (("n_agreement_words", "frequency_prompts", "ablation_new_tokens", "completions",
                   "agreement_contexts", "agreement_n_contexts", "agreement_texts", "data"), ("probes",)),
    "features": (("explainer", "task_description", "ablation_prompts", "ablation_new_tokens", "feature_source",
                  "crosscoder", "delta_position", "strong_inputs", "completions", "features_on_base", "sae"),
                 ("probes",)),
    "report": ((), ("agreement", "features")),
}


def stage_settings(config: dict[str, Any], stage: str) -> dict[str, Any]:
    """What ``stage``'s results depend on, from a config dump (``LFPConfig.model_dump(mode="json")``)."""
    fields, upstream = INPUTS[stage]
    return {"config": {k: config.get(k) for k in fields}, "upstream": {u: stage_settings(config, u)
                                                                       for u in upstream}}
