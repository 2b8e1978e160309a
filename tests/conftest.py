"""Test configuration: offline hub, the shared models/data folders, and shared fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ACTLAB_SHARED_DIR", ROOT.parent / "shared")).resolve()

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
if (SHARED / "models").is_dir():
    os.environ.setdefault("ACTLAB_MODELS_DIR", str(SHARED / "models"))
if (SHARED / "data").is_dir():
    os.environ.setdefault("ACTLAB_DATA_DIR", str(SHARED / "data"))
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

SMOLLM_DIR = "smollm2-135m-instruct-q4_1"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, skipping the test with a reason when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"needs {p} (the shared models/data folder is absent)")
    return p


@pytest.fixture(scope="session")
def stories260k():
    import actlab

    shared_path("models", "stories260k")
    return actlab.load_model("stories260k")


@pytest.fixture(scope="session")
def tinystories():
    import actlab

    shared_path("models", "tinystories-656k")
    return actlab.load_model("tinystories-656k")


@pytest.fixture(scope="session")
def smollm():
    """SmolLM2-135M-Instruct from the shared GGUF (de-quantized once, then cached)."""
    import actlab

    shared_path("models", SMOLLM_DIR)
    return actlab.load_model("HuggingFaceTB/SmolLM2-135M-Instruct")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """Every run-folder-writing CLI command run once on stories260k and the shared data (tests/corpus.py):
    ``(root, {name: (exit code, argv)})``."""
    import corpus as corpus_mod

    shared_path("models", "stories260k")
    shared_path("data")
    root = tmp_path_factory.mktemp("corpus")
    return root, corpus_mod.build(root)
