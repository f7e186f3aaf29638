r"""CNNEmbedding's ``pool="flatten"``: a position-aware embedding for vector targets."""

from __future__ import annotations

import pytest
import torch

from bayesinv.errors import OptionError
from bayesinv.nets.embedding import CNNEmbedding


def test_flatten_keeps_the_position_that_mean_pooling_loses():
    torch.manual_seed(0)
    y = torch.zeros(2, 1, 56, 56)
    y[0, 0, 20:26, 10:16] = 1.0  # the same blob at two positions away from the edges
    y[1, 0, 20:26, 34:40] = 1.0  # shifted by 24 px, a multiple of the total stride 8
    mean, flat = CNNEmbedding((1, 56, 56), 8), CNNEmbedding((1, 56, 56), 8, pool="flatten")
    assert flat.head.in_features == 64 * 7 * 7
    assert flat(y).shape == (2, 8)
    with torch.no_grad():
        d_mean = (mean(y)[0] - mean(y)[1]).abs().max()
        d_flat = (flat(y)[0] - flat(y)[1]).abs().max()
    assert d_mean < 1e-5  # such a shift leaves the pooled features unchanged
    assert d_flat > 1e-3


def test_odd_sizes_and_bad_pool():
    assert CNNEmbedding((2, 57, 31), 4, pool="flatten")(torch.randn(3, 2, 57, 31)).shape == (3, 4)
    with pytest.raises(OptionError, match="pool must be 'mean' or 'flatten'"):
        CNNEmbedding((1, 8, 8), 4, pool="max")
