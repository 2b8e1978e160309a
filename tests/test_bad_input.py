"""Every command, fed bad input: exit code 2, one line on stderr naming the bad value, no traceback. Most cases
fail before any model loads (checks run first); the rest load the 260K-parameter model."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from conftest import shared_path
from test_cli import run

TINY = "stories260k"
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Inputs for the table: good and broken files of every kind a command reads."""
    shared_path("models", TINY)
    d = tmp_path_factory.mktemp("bad")
    f = {"dir": d / "a_folder", "file": d / "a_file.txt", "binary": d / "binary.json", "missing": d / "missing.json",
         "ab": d / "ab.json", "pairs": d / "pairs.jsonl", "instr": d / "instr.json", "texts": d / "texts.txt",
         "vec": d / "v.safetensors", "nanvec": d / "nan.safetensors", "zerovec": d / "zero.safetensors",
         "cfg_typo": d / "typo.yaml", "cfg_escape": d / "escape.yaml", "lfp_typo": d / "lfp.yaml",
         "lfp_bad_yaml": d / "bad.yaml", "cache": d / "cache", "bad_manifest": d / "bad_cache",
         "sae": d / "sae", "corrupt_sae": d / "corrupt_sae", "corrupt_model": d / "corrupt_model",
         "nan_sae": d / "nan_sae", "zero_scale_sae": d / "zero_scale_sae", "wide_sae": d / "wide_sae",
         "wrong_config_model": d / "wrong_config_model", "deep_json": d / "deep.json", "deep_run": d / "deep_run",
         "bin_yaml": d / "bin.yaml", "hugevec": d / "huge.safetensors", "widevec": d / "wide.safetensors",
         "empty": d / "empty.json", "schema": d / "schema.json", "fifo": d / "fifo", "locked": d / "locked",
         "gguf": d / "v.gguf", "lfp_base": d / "lfp_base.txt", "explanations": d / "explanations.json"}
    f["dir"].mkdir()
    f["explanations"].write_text(json.dumps({"3": "the token 'the'"}))
    f["file"].write_text("plain text\n")
    f["binary"].write_bytes(bytes(range(256)) * 8)
    f["ab"].write_text(json.dumps([{"question": "Pick one.\n\nChoices:\n(A) x\n(B) y", "answer_matching_behavior":
                                    "(A)", "answer_not_matching_behavior": "(B)"}] * 4))
    f["pairs"].write_text('{"positive": "a happy day", "negative": "a sad day"}\n' * 4)
    f["instr"].write_text(json.dumps(["Tell me a story.", "Write a poem."]))
    f["texts"].write_text("Once upon a time there was a cat.\nThe dog ran home.\n")
    from actlab.steering import SteeringVector

    SteeringVector({1: torch.ones(64)}, "resid_post", {"n_layers": 5}).save(f["vec"])
    SteeringVector({1: torch.full((64,), float("nan"))}, "resid_post", {"n_layers": 5}).save(f["nanvec"])
    SteeringVector({1: torch.zeros(64)}, "resid_post", {"n_layers": 5}).save(f["zerovec"])
    f["cfg_typo"].write_text(f"point: blocks.1.mlp_out\nout: {d / 'sae_out'}\ncache: {f['cache']}\n"
                             "train: {stpes: 10}\n")
    f["cfg_escape"].write_text(f"point: blocks.1.mlp_out\nout: {d / 'sae_out2'}\ncache: {f['cache']}\n"
                               "dictionaries: [{expansion: 1, name: '../../escaped'}]\n")
    f["lfp_typo"].write_text(f"preset: tiny\nrun_dir: {d / 'lfp'}\nbase_modle: x\n")
    f["lfp_bad_yaml"].write_text("preset: [unclosed\n")
    code, _, err = run(["acts", "cache", TINY, "--data", str(f["texts"]), "--points", "blocks.1.mlp_out", "--out",
                        str(f["cache"])], _Capture())
    assert code == 0, err
    f["bad_manifest"].mkdir()
    (f["bad_manifest"] / "manifest.json").write_text("{not json")
    from actlab.sae import SAEConfig, SparseAutoencoder, save_sae

    save_sae(SparseAutoencoder(SAEConfig(64, 128, hook_point="blocks.1.mlp_out", model=TINY)), f["sae"])
    save_sae(SparseAutoencoder(SAEConfig(64, 128, hook_point="blocks.1.mlp_out", model=TINY)), f["corrupt_sae"])
    (f["corrupt_sae"] / "sae_weights.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    src = shared_path("models", TINY)
    f["corrupt_model"].mkdir()
    for p in src.iterdir():
        if p.is_file() and not p.name.endswith(".safetensors"):
            (f["corrupt_model"] / p.name).write_bytes(p.read_bytes())
    (f["corrupt_model"] / "model.safetensors").write_bytes(b"\x20\x00\x00\x00\x00\x00\x00\x00{not a header}")
    _more_files(f, d, src)
    _eval_files(f, d)
    return f


def _saved_vector(path, tensors: dict, meta) -> None:
    """A safetensors file with actlab metadata written as given (what a hand-edited or foreign file holds)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"actlab": meta if isinstance(meta, str) else json.dumps(meta)})


def _eval_files(f: dict, d: Path) -> None:
    """Evaluation configs, each wrong in one way."""
    from conftest import SHARED

    base = {"model": TINY, "out": str(d / "ev"), "data_dir": str(SHARED / "data"),
            "behaviours": [{"name": "corrigible-neutral-HHH", "source": "caa"}]}
    (d / "cap.jsonl").write_text('{"question": "2+2?", "choices": ["3", "4"], "answer": 9}\n')
    bad = {"eval_method": {"methods": ["prompt", "banana"]},
           "eval_behaviour": {"behaviours": [{"name": "sycophantic", "source": "caa"}]},
           "eval_data_dir": {"data_dir": str(d / "no-data")},
           "eval_angles": {"grid": {"angles": [200.0]}},
           "eval_judge": {"judge": {"hf": "x", "base_url": "http://localhost:1/v1", "model": "m"}},
           "eval_typo": {"methds": ["prompt"]},
           "eval_capability": {"side_effects": {"capability": str(d / "cap.jsonl")}},
           "eval_sae": {"methods": ["sae"]}}
    for name, over in bad.items():
        f[name] = d / f"{name}.yaml"
        f[name].write_text(json.dumps({**base, **over}))


def _more_files(f: dict, d: Path, src: Path) -> None:
    """The inputs of issue 22's cases: odd vector metadata, damaged dictionaries, nested JSON, binary YAML..."""
    import shutil

    from actlab.sae import SAEConfig, SparseAutoencoder, save_sae
    from actlab.steering import SteeringVector

    one = {"layer.1": torch.ones(64)}
    variants = {"meta_list": (one, "[1, 2]"), "meta_types": (one, {"n_layers": "five", "point": "resid_post"}),
                "meta_missing": (one, {"layers": [1, 2], "point": "resid_post"}),
                "meta_extra": ({**one, "bias": torch.ones(64)}, {"point": "resid_post"}),
                "meta_2d": ({"layer.1": torch.ones(2, 64)}, {"point": "resid_post"}),
                "meta_version": (one, {"schema_version": "x"})}
    for name, (tensors, meta) in variants.items():
        f[name] = d / f"{name}.safetensors"
        _saved_vector(f[name], tensors, meta)
    SteeringVector({1: torch.full((64,), 3e38)}, "resid_post", {"n_layers": 5}).save(f["hugevec"])
    SteeringVector({1: torch.ones(32)}, "resid_post").save(f["widevec"])
    SteeringVector({1: torch.ones(64)}, "resid_post").to_gguf(f["gguf"])
    for name in ("nan_sae", "zero_scale_sae"):
        save_sae(SparseAutoencoder(SAEConfig(64, 128, hook_point="blocks.1.mlp_out", model=TINY)), f[name])
    w = f["nan_sae"] / "sae_weights.safetensors"
    from safetensors.torch import load_file, save_file

    t = load_file(str(w))
    t["W_enc"][0, 0] = float("nan")
    save_file(t, str(w))
    cfg = json.loads((f["zero_scale_sae"] / "cfg.json").read_text())
    cfg["actlab"]["scale_folded"], cfg["actlab"]["input_scale"] = True, 0.0
    (f["zero_scale_sae"] / "cfg.json").write_text(json.dumps(cfg))
    save_sae(SparseAutoencoder(SAEConfig(576, 128, hook_point="blocks.1.mlp_out", model="other")), f["wide_sae"])
    f["wrong_config_model"].mkdir()
    for p in src.iterdir():
        if p.is_file():
            shutil.copy(p, f["wrong_config_model"] / p.name)
    conf = json.loads((src / "config.json").read_text())
    conf["num_hidden_layers"], conf["hidden_size"] = "five", [64]
    (f["wrong_config_model"] / "config.json").write_text(json.dumps(conf))
    deep = "[" * 100_000 + "]" * 100_000
    f["deep_json"].write_text(deep)
    f["deep_run"].mkdir()
    (f["deep_run"] / "result.json").write_text(deep)
    f["bin_yaml"].write_bytes(b"\x00\xff\xfe binary \x00" * 20)
    f["empty"].write_text("")
    f["schema"].write_text(json.dumps([{"prompt": "x", "answer": "y"}] * 3))
    os.mkfifo(f["fifo"])
    f["locked"].mkdir()
    f["lfp_base"].write_text(f"run_dir: {d / 'lfp_run'}\nbase_model: {TINY}\ndata: {f['texts']}\n")
    for name, body in {"sae_nan": "train: {steps: 2}\ndictionaries: [{expansion: .nan}]",
                       "sae_betas": "train: {betas: [2, -1]}", "sae_buffer": "buffer_shards: 0",
                       "sae_nul": "dictionaries: [{expansion: 1, name: \"a\\0b\"}]",
                       "sae_bidi": "dictionaries: [{expansion: 1, name: \"evil\\u202Etxt.exe\"}]",
                       "sae_keep": "train: {keep_checkpoints: -1}", "sae_clip": "train: {grad_clip: -1}",
                       "sae_dsae": "dictionaries: [{d_sae: 0}]"}.items():
        f[name] = d / f"{name}.yaml"
        f[name].write_text(f"point: blocks.1.mlp_out\nout: {d / ('o_' + name)}\ncache: {f['cache']}\n{body}\n")
    for name, body in {"lfp_source": "triples: {source: banana}", "lfp_fraction": "probe_test_fraction: 1.5",
                       "lfp_delta": "delta_position: banana", "lfp_topk": "top_k_layers: 0",
                       "lfp_expansions": "sae: {expansions: [0]}"}.items():
        f[name] = d / f"{name}.yaml"
        f[name].write_text(f["lfp_base"].read_text() + body + "\n")


class _Capture:
    def readouterr(self):
        class R:
            out = err = ""

        return R()


def _cases():
    """(id, argv with {placeholders}, text the error must contain)."""
    s = "steer"
    return [
        ("unknown-command", ["bogus"], "bogus"),
        ("missing-argument", ["info"], "MODEL"),
        ("info-missing-model", ["info", "./no-such-model"], "not found"),
        ("info-device", ["info", TINY, "--device", "banana"], "banana"),
        ("info-dtype", ["info", TINY, "--dtype", "fp8"], "fp8"),
        ("info-corrupt-weights", ["info", "{corrupt_model}"], "corrupt"),
        ("lens-top-k", ["lens", TINY, "-p", "hi", "--top-k", "0"], "--top-k"),
        ("lens-json-is-dir", ["lens", TINY, "-p", "hi", "--json", "{dir}"], "existing folder"),
        ("lens-json-under-file", ["lens", TINY, "-p", "hi", "--json", "{file}/x.json"], "a_file.txt"),
        ("lens-points", ["lens", TINY, "-p", "hi", "--points", "resid_psot"], "resid_post"),
        ("lens-empty-prompt", ["lens", TINY, "-p", ""], "empty"),
        ("lens-type", ["lens", TINY, "-p", "hi", "--top-k", "abc"], "abc"),
        ("demo-out-is-file", ["demo", "--out", "{file}"], "existing file"),
        ("extract-missing-data", [s, "extract", TINY, "--data", "{missing}", "--out", "{dir}/v.st"], "missing.json"),
        ("extract-binary-data", [s, "extract", TINY, "--data", "{binary}", "--out", "{dir}/v.st"], "UTF-8"),
        ("extract-format", [s, "extract", TINY, "--data", "{ab}", "--out", "{dir}/v.st", "--format", "xyz"], "xyz"),
        ("extract-method", [s, "extract", TINY, "--data", "{ab}", "--out", "{dir}/v.st", "--method", "svd"], "svd"),
        ("extract-layers", [s, "extract", TINY, "--data", "{ab}", "--out", "{dir}/v.st", "--layers", "1-3:x"],
         "1-3:x"),
        ("extract-layers-range", [s, "extract", TINY, "--data", "{pairs}", "--format", "pairs", "--out",
                                  "{dir}/v.st", "--layers", "9"], "9"),
        ("extract-limit", [s, "extract", TINY, "--data", "{ab}", "--out", "{dir}/v.st", "--limit", "0"], "--limit"),
        ("extract-batch", [s, "extract", TINY, "--data", "{ab}", "--out", "{dir}/v.st", "--batch-size", "0"],
         "--batch-size"),
        ("extract-out-is-dir", [s, "extract", TINY, "--data", "{ab}", "--out", "{dir}"], "existing folder"),
        ("extract-point", [s, "extract", TINY, "--data", "{ab}", "--out", "{dir}/v.st", "--point", "bogus"],
         "bogus"),
        ("extract-truncate", [s, "extract", TINY, "--data", "{ab}", "--out", "{dir}/v.st", "--truncate", "cut"],
         "cut"),
        ("extract-negative", [s, "extract", TINY, "--data", "{instr}", "--out", "{dir}/v.st", "--format",
                              "instructions"], "--negative"),
        ("generate-nan", [s, "generate", TINY, "--vector", "{vec}", "-p", "hi", "-m", "nan"], "nan"),
        ("generate-inf", [s, "generate", TINY, "--vector", "{vec}", "-p", "hi", "-m", "inf"], "inf"),
        ("generate-positions", [s, "generate", TINY, "--vector", "{vec}", "-p", "hi", "--positions", "x"], "'x'"),
        ("generate-nan-vector", [s, "generate", TINY, "--vector", "{nanvec}", "-p", "hi"], "NaN"),
        ("generate-missing-vector", [s, "generate", TINY, "--vector", "{missing}", "-p", "hi"], "missing.json"),
        ("sweep-nan", [s, "sweep", TINY, "--vector", "{vec}", "--data", "{ab}", "--out", "{dir}/sw",
                       "--multipliers", "nan,inf"], "nan"),
        ("sweep-empty", [s, "sweep", TINY, "--vector", "{vec}", "--data", "{ab}", "--out", "{dir}/sw",
                         "--multipliers", ""], "empty"),
        ("sweep-generated", [s, "sweep", TINY, "--vector", "{vec}", "--data", "{ab}", "--out", "{dir}/sw",
                             "--positions", "generated"], "generated"),
        ("sweep-out-is-file", [s, "sweep", TINY, "--vector", "{vec}", "--data", "{ab}", "--out", "{file}"],
         "existing file"),
        ("mix-scale", [s, "mix", TINY, "--source", "x", "--point", "blocks.1.resid_post", "-p", "hi", "--scale",
                       "nan"], "nan"),
        ("mix-position", [s, "mix", TINY, "--source", "x", "--point", "blocks.1.resid_post", "-p", "hi",
                          "--position", "abc"], "abc"),
        ("mix-source", [s, "mix", TINY, "--source", " ", "--point", "blocks.1.resid_post", "-p", "hi"], "--source"),
        ("ablate-zero", [s, "ablate", TINY, "--direction", "{zerovec}", "--out", "{dir}/abl"], "zero"),
        ("ablate-layers", [s, "ablate", TINY, "--direction", "{vec}", "--out", "{dir}/abl", "--layers", "a-b"],
         "a-b"),
        ("refusal-positions", [s, "refusal", TINY, "--harmful", "{instr}", "--harmless", "{instr}", "--out",
                               "{dir}/r", "--positions", "first"], "first"),
        ("refusal-n-train", [s, "refusal", TINY, "--harmful", "{instr}", "--harmless", "{instr}", "--out",
                             "{dir}/r", "--n-train", "0"], "--n-train"),
        ("refusal-kl", [s, "refusal", TINY, "--harmful", "{instr}", "--harmless", "{instr}", "--out", "{dir}/r",
                        "--kl-threshold", "-1"], "--kl-threshold"),
        ("export-not-a-vector", [s, "export-gguf", "{file}", "{dir}/v.gguf"], "a_file.txt"),
        ("import-not-gguf", [s, "import-gguf", "{file}", "{dir}/v.st"], "GGUF"),
        ("layers-no-data", ["layers", TINY, "--out", "{dir}/l"], "--positive"),
        ("layers-stream", ["layers", TINY, "--out", "{dir}/l", "--pairs", "{pairs}", "--streams", "mlp_hidden"],
         "mlp_hidden"),
        ("layers-positions", ["layers", TINY, "--out", "{dir}/l", "--pairs", "{pairs}", "--positions", "all"],
         "'all'"),
        ("compare-missing", ["compare", "vectors", "{missing}", "--out", "{dir}/c"], "missing.json"),
        ("compare-out-file", ["compare", "vectors", "{vec}", "--out", "{file}"], "existing file"),
        ("prompting-fraction", ["compare", "prompting", TINY, "--instruction", "x", "--prompts", "{instr}", "--out",
                                "{dir}/p", "--train-fraction", "2"], "--train-fraction"),
        ("prompting-instruction", ["compare", "prompting", TINY, "--instruction", " ", "--prompts", "{instr}",
                                   "--out", "{dir}/p"], "--instruction"),
        ("curvature-both", ["compare", "curvature", TINY, "--vector", "{vec}", "--out", "{dir}/cu", "--data",
                            "{texts}", "--ab", "{ab}"], "--data"),
        ("curvature-multipliers", ["compare", "curvature", TINY, "--vector", "{vec}", "--out", "{dir}/cu", "--data",
                                   "{texts}", "--multipliers", "1,x"], "1,x"),
        ("hessian-method", ["compare", "hessian", TINY, "--layer", "1", "--data", "{texts}", "--out", "{dir}/h",
                            "--method", "qr"], "qr"),
        ("hessian-which", ["compare", "hessian", TINY, "--layer", "1", "--data", "{texts}", "--out", "{dir}/h",
                           "--which", "SM"], "SM"),
        ("vocab-top-k", ["project-vocab", TINY, "{vec}", "--out", "{dir}/pv", "--top-k", "0"], "--top-k"),
        ("vocab-top-k-vocab", ["project-vocab", TINY, "{vec}", "--out", "{dir}/pv", "--top-k", "100000"], "100000"),
        ("vocab-zero", ["project-vocab", TINY, "{zerovec}", "--out", "{dir}/pv"], "zero"),
        ("vocab-nan", ["project-vocab", TINY, "{nanvec}", "--out", "{dir}/pv"], "NaN"),
        ("diverge-rank", ["diverge", TINY, TINY, "--out", "{dir}/d", "--rank-by", "attn_only"], "attn_only"),
        ("diverge-top-k", ["diverge", TINY, TINY, "--out", "{dir}/d", "--top-k", "0"], "--top-k"),
        ("report-missing", ["report", "{missing}"], "missing.json"),
        ("acts-batch", ["acts", "cache", TINY, "--data", "{texts}", "--points", "blocks.1.mlp_out", "--out",
                        "{dir}/ac", "--batch-size", "0"], "--batch-size"),
        ("acts-limit", ["acts", "cache", TINY, "--data", "{texts}", "--points", "blocks.1.mlp_out", "--out",
                        "{dir}/ac", "--limit", "0"], "--limit"),
        ("acts-max-length", ["acts", "cache", TINY, "--data", "{texts}", "--points", "blocks.1.mlp_out", "--out",
                             "{dir}/ac", "--max-length", "0"], "--max-length"),
        ("acts-dtype", ["acts", "cache", TINY, "--data", "{texts}", "--points", "blocks.1.mlp_out", "--out",
                        "{dir}/ac", "--cache-dtype", "int8"], "int8"),
        ("acts-points", ["acts", "cache", TINY, "--data", "{texts}", "--points", "blocks.1.mlp", "--out",
                         "{dir}/ac"], "blocks.1.mlp"),
        ("acts-binary", ["acts", "cache", TINY, "--data", "{binary}", "--points", "blocks.1.mlp_out", "--out",
                         "{dir}/ac"], "UTF-8"),
        ("acts-manifest", ["acts", "cache", TINY, "--data", "{texts}", "--points", "blocks.1.mlp_out", "--out",
                           "{bad_manifest}"], "manifest"),
        ("sae-expansion", ["sae", "train", "--cache", "{cache}", "--point", "blocks.1.mlp_out", "--out", "{dir}/s",
                           "--expansion", "abc"], "abc"),
        ("sae-steps", ["sae", "train", "--cache", "{cache}", "--point", "blocks.1.mlp_out", "--out", "{dir}/s",
                       "--steps", "0"], "--steps"),
        ("sae-config-typo", ["sae", "train", "--config", "{cfg_typo}"], "stpes"),
        ("sae-name-escape", ["sae", "train", "--config", "{cfg_escape}"], "../../escaped"),
        ("sae-architecture", ["sae", "train", "--cache", "{cache}", "--point", "blocks.1.mlp_out", "--out",
                              "{dir}/s", "--architecture", "jumprelu"], "jumprelu"),
        ("sae-eval-missing", ["sae", "eval", "{missing}", "--out", "{dir}/e", "--cache", "{cache}"], "missing.json"),
        ("sae-eval-corrupt", ["sae", "eval", "{corrupt_sae}", "--out", "{dir}/e", "--cache", "{cache}"], "corrupt"),
        ("sae-eval-width", ["sae", "eval", "{sae}", "--out", "{dir}/e", "--model", SMOL, "--data", "{texts}"],
         "576"),
        ("sae-eval-nothing", ["sae", "eval", "{sae}", "--out", "{dir}/e"], "--cache"),
        ("sae-overlap-top-k", ["sae", "overlap", "{sae}", "{sae}", "--out", "{dir}/o", "--top-k", "0"], "--top-k"),
        ("sae-top-features", ["sae", "top-examples", TINY, "{sae}", "--data", "{texts}", "--out", "{dir}/t",
                              "--features", "a,b"], "a,b"),
        ("rl-steps", ["finetune", "rl", TINY, "--data", "{texts}", "--out", "{dir}/rl", "--preset", "tiny", "--steps",
                      "-1"], "max_steps"),
        ("rl-preset", ["finetune", "rl", TINY, "--data", "{texts}", "--out", "{dir}/rl", "--preset", "huge"], "huge"),
        ("dpo-beta", ["finetune", "dpo", TINY, "--data", "{texts}", "--out", "{dir}/dpo", "--beta", "0"], "beta"),
        ("dpo-limit", ["finetune", "dpo", TINY, "--data", "{texts}", "--out", "{dir}/dpo", "--limit", "0"],
         "--limit"),
        ("lfp-missing", ["lfp", "run", "{missing}"], "missing.json"),
        ("lfp-typo", ["lfp", "run", "{lfp_typo}"], "base_modle"),
        ("lfp-bad-yaml", ["lfp", "run", "{lfp_bad_yaml}"], "YAML"),
        ("lfp-stage-missing", ["lfp", "probes", "{missing}"], "missing.json"),
        ("lfp-preset", ["lfp", "preset", "huge"], "huge"),
        # -- issue 22: odd vector files, compare, widths, ids, seeds, memory, binary / nested input ----------
        *[(f"vector-{v}", [s, "generate", TINY, "--vector", f"{{{v}}}", "-p", "hi"], v_msg) for v, v_msg in (
            ("meta_list", "JSON object"), ("meta_types", "n_layers"), ("meta_missing", "layers [1, 2]"),
            ("meta_extra", "'bias'"), ("meta_2d", "1-D"), ("meta_version", "schema_version"))],
        ("compare-nan", ["compare", "vectors", "{nanvec}", "{vec}", "--out", "{dir}/cv"], "NaN"),
        ("compare-labels", ["compare", "vectors", "{vec}", "--label", "a", "--label", "b", "--out", "{dir}/cv"],
         "--label"),
        ("ablate-width", [s, "ablate", TINY, "--direction", "{widevec}", "--out", "{dir}/aw"], "32 wide"),
        ("top-examples-width", ["sae", "top-examples", TINY, "{wide_sae}", "--data", "{texts}", "--out",
                                "{dir}/tw"], "576"),
        ("patch-answer-id", ["patch", TINY, "--clean", "a b", "--corrupt", "a c", "--answer", "99999", "--wrong",
                             " b", "--out", "{dir}/pa"], "99999"),
        ("generate-seed", [s, "generate", TINY, "--vector", "{vec}", "-p", "hi", "--seed", str(2**70)], "--seed"),
        ("tuned-lens-seed", ["tuned-lens", TINY, "--data", "{texts}", "--held-out", "1", "--out", "{dir}/tl",
                             "--seed", str(2**70)], "--seed"),
        ("sae-expansion-memory", ["sae", "train", "--cache", "{cache}", "--point", "blocks.1.mlp_out", "--out",
                                  "{dir}/sm", "--expansion", "1000000", "--batch-size", "8"], "GiB"),
        ("sae-yaml-binary", ["sae", "train", "--config", "{bin_yaml}"], "YAML"),
        ("lfp-yaml-binary", ["lfp", "run", "{bin_yaml}"], "YAML"),
        ("extract-deep-json", [s, "extract", TINY, "--data", "{deep_json}", "--out", "{dir}/v.st"], "nested"),
        ("report-deep-json", ["report", "{deep_run}", "--out", "{dir}/deep.html"], None),
        *[(f"sae-{n}", ["sae", "train", "--config", f"{{sae_{n}}}"], m) for n, m in (
            ("nan", "expansion"), ("betas", "betas"), ("buffer", "buffer_shards"), ("nul", "U+0000"),
            ("bidi", "U+202E"), ("keep", "keep_checkpoints"), ("clip", "grad_clip"), ("dsae", "d_sae"))],
        ("model-config-types", ["info", "{wrong_config_model}"], "config"),
        # -- issue 22: silently accepted before, refused now -----------------------------------------------
        ("curvature-zero", ["compare", "curvature", TINY, "--vector", "{zerovec}", "--data", "{texts}", "--out",
                            "{dir}/cz"], "zero"),
        ("curvature-nan", ["compare", "curvature", TINY, "--vector", "{nanvec}", "--data", "{texts}", "--out",
                           "{dir}/cz"], "NaN"),
        ("hessian-nan", ["compare", "hessian", TINY, "--layer", "1", "--data", "{texts}", "--vector", "{nanvec}",
                         "--out", "{dir}/hn"], "NaN"),
        ("sae-eval-nan", ["sae", "eval", "{nan_sae}", "--cache", "{cache}", "--out", "{dir}/en"], "NaN"),
        ("sae-eval-scale", ["sae", "eval", "{zero_scale_sae}", "--cache", "{cache}", "--out", "{dir}/en"],
         "input_scale"),
        ("generate-overflow", [s, "generate", TINY, "--vector", "{vec}", "-p", "hi", "-m", "1e308"], "1e+308"),
        ("generate-huge-vector", [s, "generate", TINY, "--vector", "{hugevec}", "-p", "hi"], "float32"),
        ("mix-overflow", [s, "mix", TINY, "--source", "x", "--point", "blocks.1.resid_post", "-p", "hi", "-s",
                          "1e39"], "beyond"),
        ("dpo-beta-inf", ["finetune", "dpo", TINY, "--data", "{texts}", "--out", "{dir}/dpo", "--beta", "inf"],
         "beta"),
        ("acts-max-length-context", ["acts", "cache", TINY, "--data", "{texts}", "--points", "blocks.1.mlp_out",
                                     "--out", "{dir}/ml", "--max-length", "100000"], "context"),
        ("export-onto-input", [s, "export-gguf", "{vec}", "{vec}"], "also an input"),
        ("import-onto-input", [s, "import-gguf", "{gguf}", "{gguf}"], "also an input"),
        ("out-in-locked-folder", ["lens", TINY, "-p", "hi", "--json", "{locked}/x.json"], "another actlab"),
        *[(n.replace("_", "-"), ["lfp", "run", f"{{{n}}}"], m) for n, m in (
            ("lfp_source", "banana"), ("lfp_fraction", "probe_test_fraction"), ("lfp_delta", "banana"),
            ("lfp_topk", "top_k_layers"), ("lfp_expansions", "expansions"))],
        # -- issue 22: hangs bounded --------------------------------------------------------------------
        ("generate-too-long", [s, "generate", TINY, "--vector", "{vec}", "-p", "hi", "--max-new-tokens",
                               "1000000000"], "context"),
        ("sae-batch-beyond-cache", ["sae", "train", "--cache", "{cache}", "--point", "blocks.1.mlp_out", "--out",
                                    "{dir}/sb", "--batch-size", "1000000000"], "holds"),
        # -- issue 22: input that needs no model is refused before one loads --------------------------------
        ("extract-empty", [s, "extract", TINY, "--data", "{empty}", "--out", "{dir}/v.st"], "empty"),
        ("extract-schema", [s, "extract", TINY, "--data", "{schema}", "--out", "{dir}/v.st"], "schema.json"),
        ("refusal-binary", [s, "refusal", TINY, "--harmful", "{binary}", "--harmless", "{instr}", "--out",
                            "{dir}/r"], "UTF-8"),
        ("refusal-too-few", [s, "refusal", TINY, "--harmful", "{instr}", "--harmless", "{instr}", "--out",
                             "{dir}/r", "--n-train", "8"], "--harmful"),
        ("layers-ab-schema", ["layers", TINY, "--out", "{dir}/l", "--ab", "{schema}"], "schema.json"),
        ("layers-pairs-binary", ["layers", TINY, "--out", "{dir}/l", "--pairs", "{binary}"], "UTF-8"),
        ("acts-empty", ["acts", "cache", TINY, "--data", "{empty}", "--points", "blocks.1.mlp_out", "--out",
                        "{dir}/ae"], "empty"),
        ("rl-binary", ["finetune", "rl", TINY, "--data", "{binary}", "--out", "{dir}/rl", "--preset", "tiny"],
         "UTF-8"),
        ("rl-method", ["finetune", "rl", TINY, "--data", "{texts}", "--out", "{dir}/rl", "--method", "banana"],
         "banana"),
        ("dpo-schema", ["finetune", "dpo", TINY, "--data", "{schema}", "--out", "{dir}/dpo"], "schema.json"),
        ("generate-empty-prompt", [s, "generate", TINY, "--vector", "{vec}", "-p", ""], "empty"),
        ("extract-positions", [s, "extract", TINY, "--data", "{ab}", "--out", "{dir}/v.st", "--positions",
                               "banana"], "banana"),
        ("tuned-lens-held-out", ["tuned-lens", TINY, "--data", "{texts}", "--held-out", "40", "--limit", "24",
                                 "--out", "{dir}/tl"], "--held-out 40"),
        ("top-examples-feature", ["sae", "top-examples", TINY, "{sae}", "--data", "{texts}", "--out", "{dir}/t",
                                  "--features", "99999"], "99999"),
        ("data-fifo", [s, "extract", TINY, "--data", "{fifo}", "--out", "{dir}/v.st"], "named pipe"),
        ("transcoder-layer", ["sae", "transcoder", TINY, "--data", "{texts}", "--layer", "-1", "--out", "{dir}/tc"],
         "--layer"),
        ("transcoder-k", ["sae", "transcoder", TINY, "--data", "{texts}", "--layer", "1", "--k", "0", "--out",
                          "{dir}/tc"], "--k"),
        ("explain-no-explainer", ["sae", "explain", TINY, "{sae}", "--data", "{texts}", "--out", "{dir}/x"],
         "--explainer-url"),
        ("explain-per-request", ["sae", "explain", TINY, "{sae}", "--data", "{texts}", "--out", "{dir}/x",
                                 "--explainer-url", "http://127.0.0.1:9/v1", "--explainer-model", "m",
                                 "--per-request", "0"], "--per-request"),
        ("explain-file", ["sae", "explain", TINY, "{sae}", "--data", "{texts}", "--out", "{dir}/x", "--scorer-url",
                          "http://127.0.0.1:9/v1", "--scorer-model", "m", "--explanations", "{schema}"],
         "JSON object"),
        ("explain-binary", ["sae", "explain", TINY, "{sae}", "--data", "{texts}", "--out", "{dir}/x", "--scorer-url",
                            "http://127.0.0.1:9/v1", "--scorer-model", "m", "--explanations", "{binary}"],
         "JSON object"),
        ("explain-unexplained", ["sae", "explain", TINY, "{sae}", "--data", "{texts}", "--out", "{dir}/x",
                                 "--scorer-url", "http://127.0.0.1:9/v1", "--scorer-model", "m", "--explanations",
                                 "{explanations}", "--features", "3,7"], "--features 7"),
        ("explain-latent", ["sae", "explain", TINY, "{sae}", "--data", "{texts}", "--out", "{dir}/x",
                            "--explainer-url", "http://127.0.0.1:9/v1", "--explainer-model", "m", "--features",
                            "99999"], "99999"),
        ("eval-method", ["eval", "run", "{eval_method}"], "banana"),
        ("eval-behaviour", ["eval", "run", "{eval_behaviour}"], "sycophantic"),
        ("eval-data-dir", ["eval", "run", "{eval_data_dir}"], "no-data"),
        ("eval-angles", ["eval", "run", "{eval_angles}"], "200"),
        ("eval-judge", ["eval", "run", "{eval_judge}"], "judge"),
        ("eval-typo", ["eval", "run", "{eval_typo}"], "methds"),
        ("eval-capability", ["eval", "run", "{eval_capability}"], "'answer'"),
        ("eval-sae", ["eval", "run", "{eval_sae}"], "sae"),
        ("eval-preset", ["eval", "preset", "nope"], "nope"),
        ("eval-config-missing", ["eval", "run", "{missing}"], "missing"),
        ("data-dev-zero", ["acts", "cache", TINY, "--data", "/dev/zero", "--points", "blocks.1.mlp_out", "--out",
                           "{dir}/dz"], "character device"),
    ]


# cases whose error can only come once the model is loaded (its layers, widths, vocabulary, context...)
NEEDS_MODEL = {"info-missing-model", "info-corrupt-weights", "extract-layers-range", "vocab-top-k-vocab",
               "sae-eval-width", "top-examples-width", "patch-answer-id", "mix-overflow", "acts-max-length-context",
               "generate-too-long", "model-config-types", "ablate-width"}


def _no_model_load(*a, **k):
    raise AssertionError("a model was loaded before the bad input was found")


def _check(case, argv, expected, files, capsys, monkeypatch) -> str:
    """Run one case: exit 2, one line on stderr naming the bad value, and no model loaded first unless the
    case needs one. Returns the line."""
    import actlab.models.loading as loading

    if case == "sae-eval-width":
        shared_path("models", "smollm2-135m-instruct-q4_1")
    if case == "out-in-locked-folder":
        _hold_lock(files["locked"], monkeypatch)
    with monkeypatch.context() as mp:
        if case not in NEEDS_MODEL:
            mp.setattr(loading, "_load_and_wrap", _no_model_load)
        args = [a.format(**{k: str(v) for k, v in files.items()}) for a in argv]
        code, _, err = run(args, capsys)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    if case in NEEDS_MODEL:  # a slow load reports its progress first (a timestamped log line), then the error
        lines = [ln for ln in lines if not re.match(r"\d\d:\d\d:\d\d loading ", ln)]
    if expected is None:  # an unusual input handled: the command works
        assert code == 0, (case, code, err[-800:])
        return ""
    assert code == 2, (case, code, err[-800:])
    assert len(lines) == 1 and lines[0].startswith("error: "), (case, err[-800:])
    assert "Traceback" not in err
    assert expected in lines[0], (case, lines[0])
    return lines[0]


_LOCKS: dict = {}


def _hold_lock(folder: Path, monkeypatch) -> None:
    """Another process holds ``folder``'s actlab lock (as a running sweep does) until the session ends."""
    import subprocess
    import sys

    if folder in _LOCKS:
        return
    code = ("import sys, time\nfrom filelock import FileLock\nl = FileLock(sys.argv[1]); l.acquire()\n"
            "print('held', flush=True)\ntime.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder / ".actlab.lock")], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    _LOCKS[folder] = proc


@pytest.fixture(scope="module", autouse=True)
def _release_locks():
    yield
    for proc in _LOCKS.values():
        proc.kill()
    _LOCKS.clear()


@pytest.mark.parametrize("case,argv,expected", _cases(), ids=[c[0] for c in _cases()])
def test_bad_input_is_one_clean_line(case, argv, expected, files, capsys, monkeypatch):
    _SEEN[case] = _check(case, argv, expected, files, capsys, monkeypatch)


_SEEN: dict[str, str] = {}  # each case's line in the test above (the first run, when it ran in this session)


def test_the_whole_suite_twice_gives_the_same_lines(files, capsys, monkeypatch):
    """No hidden state: every case run a second time, all in a row after the others, answers the same line as its
    first run (the model-free cases; the ones that load a model are run once each above)."""
    cases = [c for c in _cases() if c[0] not in NEEDS_MODEL]
    if all(c[0] in _SEEN for c in cases):  # the first run was the parametrized test's, case by case
        first = [_SEEN[c[0]] for c in cases]
    else:
        first = [_check(*c, files, capsys, monkeypatch) for c in cases]
    second = [_check(*c, files, capsys, monkeypatch) for c in cases]
    assert _steady(first) == _steady(second)


def _steady(lines: list[str]) -> list[str]:
    """The lines less what the machine changes between two runs: the free memory a size check reports."""
    return [re.sub(r"free memory has [\d.]+ GiB", "free memory has N GiB", ln) for ln in lines]


def test_torchrun_refusal_is_one_line(tmp_path):
    """A command that does not split its work, launched by torchrun: rank 0 says why in one line, the other
    ranks stay quiet (torchrun then prints its own failure summary, which actlab cannot change)."""
    import subprocess
    import sys

    shared_path("models", TINY)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                        "actlab", "info", TINY], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode != 0
    ours = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(ours) == 1 and "torchrun" in ours[0], r.stderr[-2000:]


def test_cuda_without_a_gpu_is_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, _, err = run(["info", TINY, "--device", "cuda"], capsys)
    assert code == 2 and err.strip().startswith("error: ") and "no CUDA GPU" in err


def test_disk_full_while_writing_is_one_line(files, capsys, monkeypatch):
    """OSError 28 during a shard write: one line naming the file; the cache stays resumable."""
    import errno

    import actlab.sae.store as store

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(a[1]) if len(a) > 1 else "shard")

    monkeypatch.setattr(store, "save_file", full, raising=False)
    import safetensors.torch as st

    monkeypatch.setattr(st, "save_file", full)
    out = Path(files["dir"]) / "full_cache"
    code, _, err = run(["acts", "cache", TINY, "--data", str(files["texts"]), "--points", "blocks.1.mlp_out",
                        "--out", str(out)], capsys)
    assert code == 2 and "no space left" in err and len(err.strip().splitlines()) == 1
    assert "shard_00000.safetensors" in err  # the file being written is named


def test_a_bug_is_a_traceback_with_exit_1_and_debug_shows_everything(capsys, monkeypatch):
    import actlab.cli.app as app_mod

    def broken(*a, **k):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(app_mod, "load", broken)
    code, _, err = run(["info", TINY], capsys)
    assert code == 1 and "Traceback" in err and "please report it" in err
    with pytest.raises(ZeroDivisionError):
        from actlab.cli import main

        main(["info", TINY, "--debug"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_output_folder(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    code, _, err = run(["lens", TINY, "-p", "hi", "--json", str(ro / "x.json")], capsys)
    assert code == 2 and "permission denied" in err


def test_a_cache_larger_than_the_free_disk_is_refused_before_the_model_loads(files, capsys, monkeypatch):
    """The free-space check reads the local model's config and tokenizer, not its weights: refused before any
    load, the sizes named; after the load (a hub id or GGUF) the same check still runs."""
    import collections

    import actlab.models.loading as loading
    import actlab.sae.store as store

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(store.shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 2000, 2000))
    monkeypatch.setattr(loading, "_load_and_wrap", _no_model_load)
    out = Path(files["dir"]) / "tight_cache"
    code, _, err = run(["acts", "cache", TINY, "--data", str(files["texts"]), "--points", "blocks.1.resid_post,"
                        "blocks.2.mlp_out", "--out", str(out)], capsys)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "GB free" in lines[0] and "x 128 values" in lines[0], err[-800:]
    assert "a model was loaded" not in err
