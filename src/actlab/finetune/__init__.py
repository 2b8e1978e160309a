"""Fine-tuning with feedback (TRL): the lexicon reward, RL (GRPO/RLOO with a KL penalty) and DPO."""

from ..data.preferences import load_preferences, split_dialogue
from ..data.texts import imdb_prefixes
from .dpo import DPOSettings, train_dpo
from .rewards import lexicon_reward, lexicon_reward_fn, vader_lexicon, words
from .rl import RL_PRESETS, RLConfig, train_rl

__all__ = [
    "RL_PRESETS", "DPOSettings", "RLConfig", "imdb_prefixes", "lexicon_reward", "lexicon_reward_fn",
    "load_preferences", "split_dialogue", "train_dpo", "train_rl", "vader_lexicon", "words",
]
