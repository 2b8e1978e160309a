"""Product edges: the `auto` steering positions, the checkpoint dtype kept on save, raw CLI output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from actlab.hooks.additions import Add
from conftest import shared_path
from tiny_models import tiny_model


def test_auto_positions_steer_from_eoi_where_a_row_has_it_and_everywhere_else():
    model = tiny_model("llama")
    eoi = [7, 8]
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 6, 11, 12, 9, 10]])  # row 0 has the end of instruction at 2
    mask = torch.ones_like(ids)
    point = "blocks.0.resid_post"
    vec = torch.randn(model.d_model)
    with model.capture([point]) as plain:
        model(input_ids=ids, attention_mask=mask)
    with model.edit(Add({point: vec}, 2.0, positions="auto", eoi_ids=eoi)), model.capture([point]) as steered:
        model(input_ids=ids, attention_mask=mask)
    diff = steered[point] - plain[point]
    assert torch.allclose(diff[0, :2], torch.zeros_like(diff[0, :2]))          # before the instruction's end
    assert torch.allclose(diff[0, 2:], (2.0 * vec).expand(4, -1), atol=1e-5)  # from it on
    assert torch.allclose(diff[1], (2.0 * vec).expand(6, -1), atol=1e-5)      # no end of instruction: all
    strict = Add({point: vec}, 2.0, positions="from_eoi", eoi_ids=eoi)
    with pytest.raises(Exception, match="row 1"), model.edit(strict):  # from_eoi is strict where auto is lenient
        model(input_ids=ids, attention_mask=mask)


@pytest.mark.parametrize("policy", ["auto", "from_eoi", "all", "last:2"])
def test_one_meaning_of_each_position_policy(policy):
    """The prefix engine (before any forward, per unpadded row) and the hooks (at the prompt's first forward,
    left-padded) find the same first steered token for every policy: one definition, prompt_starts."""
    from actlab.hooks.positions import Boundary, prompt_starts
    from actlab.steering.prefix import pad_rows

    eoi = [7, 8]
    rows = [[5, 6, 7, 8, 9], [5, 6, 11, 12, 9, 10, 3], [4, 7, 8]] if policy != "from_eoi" else \
        [[5, 6, 7, 8, 9], [5, 7, 8, 12, 9, 10, 3], [4, 7, 8]]
    per_row = [int(prompt_starts(policy, torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long), eoi)[0])
               for r in rows]
    ids, mask = pad_rows(rows, 0, "left")
    from actlab.hooks.core import ForwardState

    state = ForwardState(batch=len(rows), seq=ids.shape[1], past_len=0, mask=mask.bool(), input_ids=ids)
    m = Boundary(policy, eoi).mask(state)
    pad = [ids.shape[1] - len(r) for r in rows]
    first = [int(m[b].nonzero()[0]) - pad[b] for b in range(len(rows))]
    assert first == per_row
    expected = {"auto": [2, 0, 1], "from_eoi": [2, 1, 1], "all": [0, 0, 0], "last:2": [3, 5, 1]}[policy]
    assert per_row == expected


def test_save_keeps_the_checkpoint_dtype(tmp_path):
    """A bf16 checkpoint loaded in float32 is saved in bf16 again (not doubled in size), weights unchanged."""
    import transformers
    from safetensors import safe_open

    import actlab

    src = shared_path("models", "stories260k")
    bf16 = tmp_path / "bf16"
    hf = transformers.AutoModelForCausalLM.from_pretrained(src).to(torch.bfloat16)
    hf.save_pretrained(bf16)
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, bf16 / f.name)
    model = actlab.load_model(str(bf16), dtype="float32")
    assert model.dtype == torch.float32 and model.source["checkpoint_dtype"] == "bfloat16"
    out = model.save(tmp_path / "copy")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = f.keys()
        dtypes = {f.get_tensor(k).dtype for k in names}
    assert dtypes == {torch.bfloat16}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"
    assert model.dtype == torch.float32  # the model in memory is left alone
    again = actlab.load_model(str(out), dtype="float32")
    for (n, a), (_, b) in zip(model.hf.state_dict().items(), again.hf.state_dict().items(), strict=True):
        assert torch.equal(a, b), n  # bf16 -> f32 -> bf16 is exact
    out32 = model.save(tmp_path / "f32", dtype=None)  # as in memory when asked
    with safe_open(str(out32 / "model.safetensors"), "pt") as f:
        names = f.keys()
        assert {f.get_tensor(k).dtype for k in names} == {torch.float32}


def test_lfp_preset_is_valid_yaml_when_redirected_with_a_long_path(tmp_path):
    """`actlab lfp preset tiny --run-dir <long path> > file` writes YAML that loads back, unfolded."""
    long_dir = str(tmp_path / ("a-rather-long-folder-name-" * 6) / "runs" / "lfp")
    data = "../shared/data/imdb/" + "imdb_train_sample_with_a_long_name" * 3 + ".csv"
    target = tmp_path / "lfp.yaml"
    with open(target, "w") as fh:
        r = subprocess.run([sys.executable, "-m", "actlab", "lfp", "preset", "tiny", "--run-dir", long_dir,
                            "--data", data], stdout=fh, stderr=subprocess.PIPE, text=True, timeout=120,
                           env={**os.environ, "COLUMNS": "40"})
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(target.read_text())
    assert cfg["preset"] == "tiny" and cfg["run_dir"] == long_dir
    assert cfg["data"] == str(Path(data).resolve())  # relative to where the command ran, written absolute
    assert long_dir in target.read_text()  # on one line, not folded at the terminal width
    from actlab.lfp.config import load_config

    assert str(load_config(target).run_dir) == long_dir  # and it is a config the pipeline accepts


def test_report_survives_crafted_results_and_skips_links(tmp_path):
    """`actlab report` on a folder it did not write: results of a known kind with wrong fields, bad encodings,
    markup in strings and links that point out of the folder. Nothing crashes, nothing outside is read."""
    from actlab.report.run_report import build_report

    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key.json").write_text(json.dumps({"password": "hunter2"}))
    run = tmp_path / "run"
    (run / "sub").mkdir(parents=True)
    (run / "dots.json").write_text(json.dumps({"kind": "direction_dots", "results": [
        {"prompt": "<script>alert(1)</script>", "tokens": ["a", "b"], "dots": ["x", None]}]}))
    (run / "lens.json").write_text(json.dumps({"results": [{"prompts": [{"prompt": "p", "points": {
        "resid_post": [{"layer": 0, "top": [{"token": "<b>"}]}]}}]}]}))  # no "prob"
    (run / "top.json").write_text(json.dumps({"kind": "top_examples", "features": "not a list"}))
    (run / "weird.json").write_text(json.dumps([[1, [2, [3, {"k": "<img src=x onerror=alert(1)>"}]]]]))
    (run / "bad.json").write_bytes(b"\xff\xfe not json")
    (run / "table.csv").write_bytes(b"a,b\n\xff\xfe,2\n")
    (run / "sub" / "run.json").write_text(json.dumps({"command": "<i>x</i>", "config": None}))
    model_dir = run / "model"  # a saved model inside a run (finetune): listed with its size, never rendered
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    (model_dir / "model.safetensors").write_bytes(b"\0" * 16)
    (model_dir / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {f"tok{i}": i for i in range(5000)}}}))
    (run / "leak.json").symlink_to(secret / "key.json")
    (run / "linked").symlink_to(secret, target_is_directory=True)
    page_path = build_report(run)
    page = page_path.read_text()
    assert "hunter2" not in page and "Not included: 2 symbolic link(s)" in page
    assert "<script>alert" not in page and "<img src=x" not in page and "<i>x</i>" not in page
    assert "&lt;script&gt;" in page and "shown as plain tables" in page
    assert "could not read bad.json" in page and "could not read table.csv" in page
    assert "model/ (3 files" in page and "hidden_size" not in page and "tok4999" not in page
    assert build_report(run).read_text() == page  # deterministic: same folder, same bytes


def test_divergence_between_a_tied_model_and_its_untied_orthogonalised_copy(stories260k):
    """`actlab diverge MODEL MODEL-ablated` (the README's pair): the copy unties the embeddings."""
    from actlab.analysis.divergence import parameter_divergence
    from actlab.steering import orthogonalize

    d = torch.randn(stories260k.d_model)
    orth = orthogonalize(stories260k, d)
    assert orth.hf.get_output_embeddings().weight.data_ptr() != orth.hf.get_input_embeddings().weight.data_ptr()
    div = parameter_divergence(stories260k, orth)
    assert div.outside["model.embed_tokens.weight"] > 0  # the embeddings write the residual: orthogonalised
    assert div.outside["lm_head.weight"] == 0.0  # the unembedding reads it: kept, now as its own matrix
    assert all(v > 0 for v in div.per_layer)  # every layer's output weights were orthogonalised
    assert set(parameter_divergence(orth, stories260k).outside) == set(div.outside)  # either order


def test_lfp_preset_paths_mean_the_same_after_the_config_moves_into_a_subfolder(tmp_path):
    """The README's `lfp preset ... --run-dir runs/lfp > runs/lfp.yaml` then `lfp run runs/lfp.yaml`: paths typed
    relative to the shell's folder must not be re-read relative to the config's folder."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "texts.csv").write_text("text\nhello\n")
    target = tmp_path / "runs" / "lfp.yaml"
    with open(target, "w") as fh:
        r = subprocess.run([sys.executable, "-m", "actlab", "lfp", "preset", "tiny", "--run-dir", "runs/lfp",
                            "--data", "texts.csv"], stdout=fh, stderr=subprocess.PIPE, text=True, timeout=120,
                           cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    from actlab.lfp.config import load_config

    cfg = load_config(target)
    assert Path(cfg.run_dir) == (tmp_path / "runs" / "lfp").resolve()
    assert Path(cfg.data) == (tmp_path / "texts.csv").resolve()
