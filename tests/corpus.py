"""A corpus of real results: the CLI commands that write run folders, run once on the 260K-parameter model and the
shared data, each into its own folder. Tests that need "every kind of result a user can have" read it (the
report's escaping fuzz, the run records' intervention lists) instead of hand-made samples."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import shared_path

TINY = "stories260k"


class _NoCapture:
    def readouterr(self):
        class R:
            out = err = ""

        return R()


def commands(root: Path) -> dict[str, list[str]]:
    """name -> argv (folders under ``root``); in an order where each command finds what it reads."""
    data = shared_path("data")
    caa_gen = str(data / "caa" / "generate" / "corrigible-neutral-HHH" / "generate_dataset.json")
    caa_ab = str(data / "caa" / "test" / "corrigible-neutral-HHH" / "test_dataset_ab.json")
    imdb = str(data / "imdb" / "imdb_train_sample.csv")
    harmful = str(data / "refusal_direction" / "splits" / "harmful_train.json")
    harmless = str(data / "refusal_direction" / "splits" / "harmless_train.json")
    hh = str(data / "hh_rlhf" / "harmless-base" / "test.jsonl.gz")
    r = str(root)
    vec = f"{r}/vectors/syco.safetensors"
    root.mkdir(parents=True, exist_ok=True)
    (root / "eval.yaml").write_text(json.dumps({  # JSON is YAML
        "model": TINY, "out": f"{r}/eval", "data_dir": str(data),
        "behaviours": [{"name": "corrigible-neutral-HHH", "source": "caa"}],
        "methods": ["prompt", "mean_diff", "rotation", "ablation"],
        "grid": {"layers": "1,3", "multipliers": [-2.0, 2.0], "angles": [90.0]}, "extraction_limit": 8,
        "ab_limit": 8, "open_ended": {"n": 2, "max_new_tokens": 4}, "side_effects": {"n_neutral": 4},
        "bootstrap": 100, "steerability": {"multipliers": [-1.0, 0.0, 1.0]}}))
    return {
        "lens": ["lens", TINY, "-p", "Once upon a time there was", "--target", " a", "--points",
                 "resid_post,attn_out", "--json", f"{r}/lens/lens.json", "--html", f"{r}/lens/lens.html"],
        "extract": ["steer", "extract", TINY, "--data", caa_gen, "--limit", "8", "--layers", "1-4", "--truncate",
                    "skip", "--out", vec],
        "extract2": ["steer", "extract", TINY, "--data", caa_gen, "--limit", "8", "--layers", "1-4", "--method",
                     "pca", "--truncate", "skip", "--out", f"{r}/vectors/syco_pca.safetensors"],
        "sweep": ["steer", "sweep", TINY, "--vector", vec, "--data", caa_ab, "--limit", "6", "--layers", "1,3",
                  "--multipliers", "-2,0,2", "--out", f"{r}/sweep"],
        "mix": ["steer", "mix", TINY, "--source", "a happy day", "--point", "blocks.2.resid_post", "-p", "Once",
                "--max-new-tokens", "4", "--out", f"{r}/mix"],
        "refusal": ["steer", "refusal", TINY, "--harmful", harmful, "--harmless", harmless, "--n-train", "8",
                    "--n-val", "4", "--positions", "last", "--layers", "2-4", "--top-k", "1", "--max-new-tokens",
                    "4", "--out", f"{r}/refusal"],
        "ablate": ["steer", "ablate", TINY, "--direction", f"{r}/refusal/direction.safetensors", "--out",
                   f"{r}/ablated", "-p", "Once", "--max-new-tokens", "4"],
        "crosscoder": ["diff", "crosscoder", TINY, f"{r}/ablated", "--data", imdb, "--limit", "24", "--max-length",
                       "32", "--steps", "20", "--batch-size", "64", "--expansion", "1", "--k", "4", "--dashboards", "2",
                       "--out", f"{r}/crosscoder"],
        "diverge": ["diverge", TINY, f"{r}/ablated", "--out", f"{r}/diverge"],
        "compare": ["compare", "vectors", vec, f"{r}/vectors/syco_pca.safetensors", "--out", f"{r}/compare"],
        "layers": ["layers", TINY, "--ab", caa_ab, "--limit", "6", "--out", f"{r}/layers"],
        "vocab": ["project-vocab", TINY, vec, "--out", f"{r}/vocab", "-p", "Once", "--max-new-tokens", "4"],
        "patch": ["patch", TINY, "--clean", "Tom has a cat. The cat", "--corrupt", "Tom has a dog. The cat",
                  "--answer", " was", "--wrong", " had", "--out", f"{r}/patch"],
        "prompting": ["compare", "prompting", TINY, "--instruction", "Be very happy.", "--prompts", harmless,
                      "--limit", "8", "--out", f"{r}/prompting"],
        "curvature": ["compare", "curvature", TINY, "--vector", vec, "--layer", "2", "--data", imdb, "--limit",
                      "4", "--max-length", "32", "--out", f"{r}/curvature"],
        "hessian": ["compare", "hessian", TINY, "--layer", "2", "--data", imdb, "--limit", "4", "--max-length", "32",
                    "--top-k", "2", "--out", f"{r}/hessian"],
        "tuned_lens": ["tuned-lens", TINY, "--data", imdb, "--limit", "24", "--held-out", "8", "--steps", "3",
                       "--max-length", "32", "--out", f"{r}/tuned_lens"],
        "cache": ["acts", "cache", TINY, "--data", imdb, "--limit", "40", "--max-length", "64", "--points",
                  "blocks.2.resid_post", "--out", f"{r}/cache"],
        "sae_train": ["sae", "train", "--cache", f"{r}/cache", "--point", "blocks.2.resid_post", "--expansion", "1,2",
                      "--steps", "20", "--batch-size", "64", "--out", f"{r}/sae"],
        "sae_eval": ["sae", "eval", f"{r}/sae/saes/relu-1x-l1_0.001", f"{r}/sae/saes/relu-2x-l1_0.001", "--cache",
                     f"{r}/cache", "--model", TINY, "--data", imdb, "--limit", "4", "--max-length", "32", "--out",
                     f"{r}/sae/eval"],
        "sae_overlap": ["sae", "overlap", f"{r}/sae/saes/relu-1x-l1_0.001", f"{r}/sae/saes/relu-2x-l1_0.001", "--out",
                        f"{r}/sae/overlap"],
        "sae_top": ["sae", "top-examples", TINY, f"{r}/sae/saes/relu-2x-l1_0.001", "--data", imdb, "--limit", "20",
                    "--top-k", "4", "--features", "0,1,2", "--out", f"{r}/sae/top"],
        "eval": ["eval", "run", f"{r}/eval.yaml"],
        "transcoder": ["sae", "transcoder", TINY, "--data", imdb, "--layer", "1", "--limit", "24", "--max-length", "32",
                       "--steps", "20", "--batch-size", "64", "--expansion", "1", "--k", "4", "--out",
                       f"{r}/transcoder"],
        "dpo": ["finetune", "dpo", TINY, "--data", hh, "--limit", "8", "--steps", "2", "--batch-size", "4",
                "--max-length", "64", "--out", f"{r}/dpo"],
    }


def build(root: Path) -> dict[str, tuple[int, str, list[dict]]]:
    """Run every command; returns name -> (exit code, the argv joined, the records of every intervention the
    command applied to a model) so a test can say which one failed and compare with what its run.json lists."""
    from actlab.cli import main
    from actlab.hooks import interventions

    applied: list[dict] = []
    original = interventions.Edits.__init__

    def watching(self, target, ivs):
        ivs = list(ivs)
        original(self, target, ivs)
        applied.extend(iv.record() for iv in ivs)

    out = {}
    interventions.Edits.__init__ = watching
    try:
        for name, argv in commands(root).items():
            applied.clear()
            try:
                main(argv)
                code = 0
            except SystemExit as e:
                code = int(e.code or 0)
            out[name] = (code, " ".join(argv), list(applied))
    finally:
        interventions.Edits.__init__ = original
    return out
