"""The LFP study as written (issue 25): sampled completions of token prefixes (Table 6), per-token deltas, the
lexicon words read in real IMDb passages - pure parts against hand computations, the stages on the tiny run."""

from __future__ import annotations

import json

import pytest
import torch

from actlab.lfp.completions import CompletionSpec, complete, prefixes
from actlab.lfp.probes import deltas, per_token_deltas
from actlab.lfp.triples import word_contexts
from conftest import shared_path

IMDB = shared_path("data", "imdb", "imdb_train_sample.csv")


def test_per_token_deltas_take_the_norm_per_token_pair():
    g = torch.Generator().manual_seed(0)
    pos = [torch.randn(2, 6, generator=g), torch.randn(1, 6, generator=g)]
    neu = [torch.randn(3, 6, generator=g), torch.randn(1, 6, generator=g)]
    neg = [torch.randn(1, 6, generator=g), torch.randn(1, 6, generator=g)]
    got = per_token_deltas(pos, neu, neg)
    by_hand = [sum(float((a.double() - b.double()).norm()) for a in pos[0] for b in neu[0]) / 6,
               float((pos[1][0].double() - neu[1][0].double()).norm())]
    assert got["pos"].tolist() == pytest.approx(by_hand, rel=1e-12)
    neg_hand = -sum(float((neg[0][0].double() - b.double()).norm()) for b in neu[0]) / 3
    assert float(got["neg"][0]) == pytest.approx(neg_hand)
    means = deltas(*(torch.stack([c.mean(0) for c in x]) for x in (pos, neu, neg)))
    assert float(got["pos"][1]) == pytest.approx(float(means["pos"][1]), rel=1e-12)  # one token each: the same
    assert float(got["pos"][0]) > float(means["pos"][0])  # norms before averaging: never smaller (triangle)
    assert float(got["pos_scaled"].abs().max().clip(min=got["neg_scaled"].abs().max())) == pytest.approx(0.8)


def test_word_contexts_are_real_passages_at_the_word():
    texts = ["It was a dreadful, DREADFUL film.", "Nothing dreadful here", "A superb cast. Superb!", "dreadfully"]
    got = word_contexts(texts, ["dreadful", "superb", "absent"], per_word=2, window_words=4, seed=0, exclude={1})
    assert set(got) == {"dreadful", "superb"} and len(got["dreadful"]) == 2 and len(got["superb"]) == 2
    for word, ctxs in got.items():
        for text, (lo, hi) in ctxs:
            assert text[lo:hi].lower() == word and "Nothing" not in text  # text 1 excluded; "dreadfully" no match
    assert ("was a dreadful, DREADFUL", [6, 14]) in got["dreadful"]  # a window centred on the word
    real = json.loads(json.dumps(word_contexts(_imdb_texts(300), ["terrible"], per_word=3, window_words=24)))
    assert len(real["terrible"]) == 3 and all(t[s[0]:s[1]].lower() == "terrible" for t, s in real["terrible"])


def _imdb_texts(n):
    from actlab.data import read_texts

    return [t.replace("<br />", " ") for t in read_texts(IMDB, limit=n)]


def test_token_prefixes_and_seeded_sampling(tinystories):
    tok = tinystories.tokenizer
    spec = CompletionSpec(prefix_tokens=30, sample=True, batch_size=4)
    ps = prefixes(IMDB, 6, spec, tok)
    assert len(ps) == 6
    for p in ps:
        assert abs(len(tok(p, add_special_tokens=False)["input_ids"]) - 30) <= 2  # decode/re-encode round trip
    first = " ".join(_imdb_texts(1)[0].split())
    assert first.startswith(ps[0][:20])
    a = complete(tinystories, ps, spec, max_new_tokens=8, seed=3)
    b = complete(tinystories, ps, spec, max_new_tokens=8, seed=3)
    greedy = complete(tinystories, ps, CompletionSpec(prefix_tokens=30), max_new_tokens=8, seed=3)
    assert a == b and a != greedy
    assert greedy == tinystories.generate_text(ps, max_new_tokens=8)
    assert "sampled" in spec.describe() and "30-token" in spec.describe()
    words = prefixes(IMDB, 2, CompletionSpec(), tok)
    assert all(len(w.split()) == 8 for w in words)


def test_a_csv_field_holding_unicode_line_separators_stays_one_row(tmp_path):
    """IMDb reviews hold U+0085 (a Windows-1252 ellipsis) inside quoted fields; str.splitlines broke one of the
    shared sample's 5,000 reviews into two rows (5,001 texts). The csv module reads the file's own newlines."""
    from actlab.data import read_texts

    p = tmp_path / "r.csv"
    p.write_text('id,text\n1,"Wait\x85 what\u2028next"\n2,"two\nlines"\n3,plain\n', encoding="utf-8")
    assert read_texts(p) == ["Wait\x85 what\u2028next", "two\nlines", "plain"]
    assert len(read_texts(IMDB)) == 5000
