"""The BR-MRS loss plug-in: config routing, refusal, and the added terms on a toy model."""
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from brmrs_pyg.config import ConfigError, resolve
from brmrs_pyg.losses import bpr_loss, chns_loss, synergy_loss
from brmrs_pyg.recommenders.base import Batch
from brmrs_pyg.recommenders.branched import (FUSED, Branches, BranchedRecommender,
                                             PluginParams)


@dataclass(frozen=True)
class ToyParams:
    reg_weight: float = 0.0


class Toy(BranchedRecommender):
    """Two modality tables; the fused branch is their concatenation (summed scores)."""

    Params = ToyParams

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.modalities = ["t", "v"]
        self.users = torch.nn.ParameterDict(
            {m: torch.nn.Parameter(torch.randn(3, 2, generator=g)) for m in self.modalities})
        self.items = torch.nn.ParameterDict(
            {m: torch.nn.Parameter(torch.randn(6, 2, generator=g)) for m in self.modalities})

    def branches(self) -> dict[str, tuple[Tensor, Tensor]]:
        out = {m: (self.users[m], self.items[m]) for m in self.modalities}
        out[FUSED] = (torch.cat([self.users[m] for m in self.modalities], 1),
                      torch.cat([self.items[m] for m in self.modalities], 1))
        return out

    def branch_loss(self, batch: Batch, branches: Branches) -> tuple[Tensor, dict[str, Tensor]]:
        user, item = branches[FUSED]
        bpr = bpr_loss((user[batch.users] * item[batch.pos]).sum(-1),
                       (user[batch.users] * item[batch.neg[:, 0]]).sum(-1))
        return bpr, {"bpr": bpr.detach()}


def _batch() -> Batch:
    return Batch(users=torch.tensor([0, 1, 2]), pos=torch.tensor([0, 1, 2]),
                 neg=torch.tensor([[3, 4, 5], [5, 3, 0], [1, 4, 3]]))


def test_plugin_adds_chns_and_synergy_over_the_branches() -> None:
    model, batch = Toy(), _batch()
    own, _ = model.branch_loss(batch, model.branches())
    model.attach_plugin(PluginParams(lambda_h=0.5, lambda_s=2.0, theta=0.3, pool_size=3))
    assert model.num_negatives == 3
    total, terms = model.loss(batch)
    # naive reference: scores per branch by explicit loops
    s = {b: torch.stack([torch.stack([(u[batch.users[r]] * i[j]).sum() for j in batch.neg[r]])
                         for r in range(3)]) for b, (u, i) in model.branches().items()}
    p = {b: torch.stack([(u[batch.users[r]] * i[batch.pos[r]]).sum() for r in range(3)])
         for b, (u, i) in model.branches().items()}
    chns = chns_loss({m: p[m] for m in "tv"}, {m: s[m] for m in "tv"}, 1)
    syn = synergy_loss(p[FUSED], s[FUSED][:, 0], {m: p[m] for m in "tv"},
                       {m: s[m][:, 0] for m in "tv"}, 0.3, True)
    torch.testing.assert_close(total, own + 0.5 * chns + 2.0 * syn)
    assert set(terms) == {"bpr", "chns", "syn"}
    # and the hand formula of CHNS for the first row: t trained on v's hardest candidate
    row = 0
    j_v = int(s["v"][row].argmax())
    j_t = int(s["t"][row].argmax())
    manual = (-torch.nn.functional.logsigmoid(p["t"][row] - s["t"][row, j_v])
              - torch.nn.functional.logsigmoid(p["v"][row] - s["v"][row, j_t]))
    rows = [(-torch.nn.functional.logsigmoid(p["t"][r] - s["t"][r, int(s["v"][r].argmax())])
             - torch.nn.functional.logsigmoid(p["v"][r] - s["v"][r, int(s["t"][r].argmax())]))
            for r in range(3)]
    torch.testing.assert_close(rows[0], manual)
    torch.testing.assert_close(chns, torch.stack(rows).mean())


def test_without_plugin_the_loss_is_the_models_own() -> None:
    model, batch = Toy(), _batch()
    total, terms = model.loss(batch)
    own, _ = model.branch_loss(batch, model.branches())
    torch.testing.assert_close(total, own)
    assert set(terms) == {"bpr"}


def test_plugin_keys_route_and_are_refused_without_the_plugin() -> None:
    config = resolve([("cli", {"plugin": "brmrs", "lambda_h": "0.5", "theta": "0.2"})],
                     ToyParams, PluginParams)
    assert config.plugin == PluginParams(lambda_h=0.5, theta=0.2)
    assert config.flat()["lambda_h"] == 0.5
    assert resolve([], ToyParams, PluginParams).plugin is None
    with pytest.raises(ConfigError, match="plugin=brmrs"):
        resolve([("cli", {"lambda_h": "0.5"})], ToyParams, PluginParams)
    with pytest.raises(ConfigError, match="plugin must be"):
        resolve([("cli", {"plugin": "brmsr"})], ToyParams, PluginParams)
    with pytest.raises(ConfigError, match="hard_k"):
        resolve([("cli", {"plugin": "brmrs", "hard_k": "4", "pool_size": "3"})],
                ToyParams, PluginParams)


def test_models_without_branches_refuse_the_plugin(tmp_path, capsys) -> None:
    from brmrs_pyg.cli import main
    from tests.conftest import REPO
    for model, why in (("lightgcn", "per-modality and fused"), ("brmrs", "already")):
        code = main(["--dataset", "synthetic", "--model", model, "--data-dir",
                     str(tmp_path / "d"), "--epochs", "1", "plugin=brmrs",
                     f"out={tmp_path / model}"], root=REPO)
        assert code == 2
        assert why in capsys.readouterr().err
