"""``actlab eval``: does an intervention work? One harness that compares steering methods (prompting, CAA
mean difference, PCA, probe directions, rotation, SAE features, directional ablation...) on the same held-out
evaluation - A/B behaviour with letter balance, steerability slopes, open-ended generations scored by a judge
and by judge-free metrics, and side effects (KL, perplexity, capability) - choosing each method's cell on the
validation split and reporting it on the test split. See docs/eval.md."""

from .config import PRESETS, EvalConfig, load_config, preset_yaml
from .harness import prepare, run_eval, select
from .methods import METHODS

__all__ = ["METHODS", "PRESETS", "EvalConfig", "load_config", "prepare", "preset_yaml", "run_eval", "select"]
