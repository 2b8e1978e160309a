"""Loading real models (../shared/models): local folders, short names, hub ids, GGUF (+ cache, tokenizer fixes)."""

from __future__ import annotations

import time

import pytest
import torch

import actlab
from actlab.errors import ActlabError, ModelNotFoundError
from actlab.models import find_local, gguf
from conftest import SMOLLM_DIR, shared_path


def test_short_name_and_folder_resolve_to_the_same_model(stories260k):
    folder = shared_path("models", "stories260k")
    by_path = actlab.load_model(str(folder))
    assert by_path.n_layers == stories260k.n_layers == 5
    assert stories260k.d_model == 64 and stories260k.vocab_size == 512
    ids = torch.tensor([[1, 403, 407, 261, 378]])
    torch.testing.assert_close(by_path(input_ids=ids).logits, stories260k(input_ids=ids).logits)


def test_hub_id_found_in_local_model_dir():
    shared_path("models", SMOLLM_DIR)
    assert find_local("HuggingFaceTB/SmolLM2-135M-Instruct").name == SMOLLM_DIR
    assert find_local("tinystories-656k").name == "tinystories-656k"
    assert find_local("SmolLM2-135M") is None  # a prefix alone is not a match


def test_real_models_generate_their_documented_text(stories260k, tinystories):
    out = stories260k.generate_text("Once upon a time", max_new_tokens=12)[0]
    assert out.startswith(", there was a little girl named Lily")
    out2 = tinystories.generate_text("Once upon a time", max_new_tokens=8)[0]
    assert "Lily" in out2


def test_resid_post_matches_hidden_states_on_real_model(tinystories):
    batch = tinystories.tokenize(["Once upon a time there was", "A dog"], padding_side="left")
    with tinystories.capture("resid_post", positions="all") as acts:
        out = tinystories(**batch, output_hidden_states=True)
    hs = out.hidden_states
    for b, n in enumerate(acts.lengths.tolist()):
        real = batch["attention_mask"][b].bool()
        torch.testing.assert_close(acts["blocks.0.resid_post"][b, :n], hs[1][b][real], atol=1e-5, rtol=0)


def test_smollm_chat_answers_paris(smollm):
    assert smollm.n_layers == 30 and smollm.d_model == 576
    prompt = smollm.chat_prompt("What is the capital of France?")
    answer = smollm.generate_text(prompt, max_new_tokens=16, add_special_tokens=False)[0]
    assert "Paris" in answer


def test_gguf_cache_makes_second_load_fast(smollm):
    assert smollm.source["kind"] == "gguf"
    t0 = time.perf_counter()
    again = actlab.load_model("HuggingFaceTB/SmolLM2-135M-Instruct", validate=False)
    assert again.source["gguf_cache_hit"] is True
    assert time.perf_counter() - t0 < 15
    ids = smollm.tokenize("The capital of France is")
    torch.testing.assert_close(again(**ids).logits, smollm(**ids).logits)


def test_gguf_file_alone_gets_a_fixed_tokenizer(tmp_path, monkeypatch):
    """A bare .gguf (no tokenizer files beside it): tokenizer built from GGUF metadata, BOS/EOS/chat fixed."""
    src = shared_path("models", SMOLLM_DIR, "SmolLM2-135M-Instruct.Q4_1.gguf")
    (tmp_path / "m").mkdir()
    link = tmp_path / "m" / src.name
    link.symlink_to(src)
    monkeypatch.setenv("ACTLAB_CACHE_DIR", str(tmp_path / "cache"))
    m = actlab.load_model(str(link))
    tok = m.tokenizer
    assert m.source["tokenizer"] == "gguf"
    assert tok.bos_token == "<|im_start|>" and tok.eos_token == "<|im_end|>"
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    ref = actlab.load_model("HuggingFaceTB/SmolLM2-135M-Instruct", validate=False).tokenizer
    text = "Hello world, 12345 tokens!"
    assert tok(text)["input_ids"] == ref(text)["input_ids"]  # no spurious BOS (add_bos_token=False)
    answer = m.generate_text(m.chat_prompt("What is the capital of France?"), max_new_tokens=16,
                             add_special_tokens=False)[0]
    assert "Paris" in answer
    assert any((tmp_path / "cache" / "gguf").iterdir())


def test_gguf_load_parses_the_file_once(tmp_path, monkeypatch):
    """A first GGUF load used to parse the file's metadata once per reader transformers opened (config, weights,
    tokenizer) and to build gguf's tensor-name map once per module; inside `shared_reads` one reader per file and
    one map per (architecture, layers) serve them all, and both names are put back after (even on an error)."""
    import gguf as gguf_pkg

    real_reader, real_map = gguf_pkg.GGUFReader, gguf_pkg.get_tensor_name_map
    opened: list[str] = []

    class Counting(real_reader):
        def __init__(self, path, mode="r"):
            opened.append(str(path))
            super().__init__(path, mode)

    monkeypatch.setattr(gguf_pkg, "GGUFReader", Counting)
    monkeypatch.setenv("ACTLAB_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "m").mkdir()
    src = shared_path("models", SMOLLM_DIR, "SmolLM2-135M-Instruct.Q4_1.gguf")
    (tmp_path / "m" / src.name).symlink_to(src)  # alone: the tokenizer is read from the file too
    m = actlab.load_model(str(tmp_path / "m" / src.name), validate=False)
    assert m.source["tokenizer"] == "gguf" and len(opened) == 1, opened
    assert gguf_pkg.GGUFReader is Counting and gguf_pkg.get_tensor_name_map is real_map
    with pytest.raises(RuntimeError), gguf.shared_reads():
        assert gguf_pkg.get_tensor_name_map(gguf_pkg.MODEL_ARCH.LLAMA, 2) is \
            gguf_pkg.get_tensor_name_map(gguf_pkg.MODEL_ARCH.LLAMA, 2)
        raise RuntimeError
    assert gguf_pkg.GGUFReader is Counting and gguf_pkg.get_tensor_name_map is real_map


def test_fix_tokenizer_reports_changes():
    class Tok:
        bos_token = eos_token = pad_token = unk_token = None
        chat_template = None

    src = shared_path("models", SMOLLM_DIR, "SmolLM2-135M-Instruct.Q4_1.gguf")
    t = Tok()
    changed = gguf.fix_tokenizer(t, src)
    assert t.bos_token == "<|im_start|>" and t.eos_token == "<|im_end|>" and t.pad_token == "<|im_end|>"
    assert t.unk_token == "<|endoftext|>" and "chat_template" in changed


def test_unknown_model_names_local_choices(monkeypatch):
    shared_path("models")
    with pytest.raises(ModelNotFoundError, match=r"(?s)not-a-model.*stories260k"):
        actlab.load_model("./not-a-model")
    with pytest.raises(ModelNotFoundError, match=r"(?s)nobody/nothing-here.*hub.*stories260k"):
        actlab.load_model("nobody/nothing-here")
    with pytest.raises(ModelNotFoundError, match="empty"):
        actlab.load_model("")


def test_bad_gguf_files(tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"NOPE" + b"\0" * 100)
    with pytest.raises(ModelNotFoundError, match="not a GGUF file"):
        actlab.load_model(str(fake))
    src = shared_path("models", SMOLLM_DIR, "SmolLM2-135M-Instruct.Q4_1.gguf")
    cut = tmp_path / "cut" / "trunc.gguf"
    cut.parent.mkdir()
    with src.open("rb") as f:
        cut.write_bytes(f.read(200_000))
    with pytest.raises(ModelNotFoundError, match="cannot read GGUF"):
        actlab.load_model(str(cut), cache_gguf=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotFoundError, match="no model weights"):
        actlab.load_model(str(empty))


def test_bad_dtype():
    with pytest.raises(ActlabError, match="bfloat16"):
        actlab.load_model("stories260k", dtype="bf17")


def test_bad_prompts(stories260k):
    with pytest.raises(ActlabError, match="empty"):
        stories260k.tokenize(["fine", "   "])
    with pytest.raises(ActlabError, match="context of 512"):
        stories260k.tokenize("word " * 600)
    with pytest.raises(ActlabError, match="empty batch"):
        stories260k.tokenize([])


def test_gguf_conversion_draws_no_progress_bar(capsys):
    """transformers' GGUF reader draws a plain tqdm bar; actlab reports its own progress, so loading is quiet."""
    import actlab

    shared_path("models", "smollm2-135m-instruct-q4_1")
    actlab.load_model("HuggingFaceTB/SmolLM2-135M-Instruct", cache_gguf=False)
    assert "Converting and de-quantizing" not in capsys.readouterr().err
