"""Streaming statistics equal statistics of the stored activations."""

from __future__ import annotations

import pytest
import torch

from actlab.errors import InputError
from actlab.hooks import RunningStats, stream_stats


def test_running_stats_merge_matches_numpy_style():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 5, generator=g) * 3 + 7
    a, b = RunningStats(), RunningStats()
    for chunk in x[:37].split(10):
        a.update(chunk)
    b.update(x[37:])
    merged = a.merge(b)
    assert merged.count == 100
    torch.testing.assert_close(merged.mean, x.double().mean(0))
    torch.testing.assert_close(merged.var, x.double().var(0, unbiased=False))
    torch.testing.assert_close(merged.sample_var, x.double().var(0, unbiased=True))


@pytest.mark.parametrize("positions", ["tokens", "last", [0, -1]])
def test_stream_stats_equals_stored(tinystories, positions):
    texts = ["Once upon a time", "The little dog ran to the park and played", "Lily was happy",
             "One day, a bird", "Tom had a red ball"]
    stats = stream_stats(tinystories, texts, ["blocks.0.resid_post", "blocks.1.mlp_out"], positions,
                         batch_size=2)
    acts = tinystories.activations(texts, ["blocks.0.resid_post", "blocks.1.mlp_out"], positions)
    for name, s in stats.items():
        ref = acts[name].double()
        assert s.count == ref.shape[0]
        torch.testing.assert_close(s.mean, ref.mean(0), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(s.var, ref.var(0, unbiased=False), atol=1e-6, rtol=1e-4)


def test_stream_stats_refuses_all_and_empty(tinystories):
    with pytest.raises(InputError, match="tokens"):
        stream_stats(tinystories, ["a b"], "blocks.0.resid_post", "all")
    with pytest.raises(InputError, match="empty"):
        stream_stats(tinystories, [], "blocks.0.resid_post")
