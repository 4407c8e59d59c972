import math

import pytest
import torch

from brmrs_pyg.losses import bpr_loss, l2_reg


def test_bpr_hand_computed():
    pos = torch.tensor([2.0, 0.0, -1.0])
    neg = torch.tensor([1.0, 0.0, 1.0])
    expected = -(math.log(1 / (1 + math.exp(-1))) + math.log(0.5)
                 + math.log(1 / (1 + math.exp(2)))) / 3
    assert bpr_loss(pos, neg).item() == pytest.approx(expected, rel=1e-6)


def test_bpr_several_negatives_broadcast():
    pos = torch.tensor([1.0, 2.0])
    neg = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    diffs = [1.0, 0.0, 0.0, -1.0]
    expected = -sum(math.log(1 / (1 + math.exp(-d))) for d in diffs) / 4
    assert bpr_loss(pos, neg).item() == pytest.approx(expected, rel=1e-6)


def test_bpr_is_stable_for_large_margins():
    loss = bpr_loss(torch.tensor([-200.0]), torch.tensor([0.0]))
    assert loss.item() == pytest.approx(200.0)


def test_l2_reg_hand_computed():
    u = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    i = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    # (1 + 4 + 0 + 1 + 9 + 0 + 1 + 1) / (2 * 2)
    assert l2_reg(u, i).item() == pytest.approx(17 / 4)
