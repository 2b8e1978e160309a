"""The LFP pipeline's stages, in order (a light module: the CLI lists them without importing torch)."""

STAGES = ("finetune", "divergence", "sae", "triples", "deltas", "probes", "agreement", "features", "report")
