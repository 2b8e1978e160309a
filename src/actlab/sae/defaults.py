"""Defaults the CLI shows in ``--help`` (plain constants, so ``--help`` imports neither torch nor pydantic);
:class:`actlab.sae.config.TrainConfig` uses the same values."""

STEPS = 1000
BATCH_SIZE = 4096
LR = 1e-3
