"""Every command, fed bad input: exit code 2, one line on stderr naming the bad value, no traceback. Most cases
fail before any model loads (checks run first); the rest load the 260K-parameter model."""

from __future__ import annotations

import json
import os
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
         "sae": d / "sae", "corrupt_sae": d / "corrupt_sae", "corrupt_model": d / "corrupt_model"}
    f["dir"].mkdir()
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
    return f


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
    ]


@pytest.mark.parametrize("case,argv,expected", _cases(), ids=[c[0] for c in _cases()])
def test_bad_input_is_one_clean_line(case, argv, expected, files, capsys):
    if case == "sae-eval-width":
        shared_path("models", "smollm2-135m-instruct-q4_1")
    args = [a.format(**{k: str(v) for k, v in files.items()}) for a in argv]
    code, _, err = run(args, capsys)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2, (case, code, err[-800:])
    assert len(lines) == 1 and lines[0].startswith("error: "), (case, err[-800:])
    assert "Traceback" not in err
    assert expected in lines[0], (case, lines[0])


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
