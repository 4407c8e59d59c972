"""CUDA checks (benchmarks/gpu_check.sh runs them with the other tests named *cuda*): the
device results equal the CPU oracle, and a whole training step (sampling, loss, backward,
optimiser) never synchronises with the host. Skipped without CUDA."""
import pytest
import torch

from brmrs_pyg.evaluation import Evaluator
from brmrs_pyg.interactions import PairIndex
from brmrs_pyg.losses import CrossModalWeights, cross_modal_objective
from brmrs_pyg.recommenders import MODELS, Batch
from brmrs_pyg.sampling import sample_negatives
from brmrs_pyg.train import make_optimizer
from tests.tiny_models import build_model, tiny_data

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CUDA = "cuda"


@pytest.mark.parametrize("source,k", [("chns", 1), ("chns", 3), ("fused", 2)])
def test_cross_modal_objective_on_cuda_matches_cpu(source, k):
    gen = torch.Generator().manual_seed(k)
    names = ["text", "image", "audio", "fused"]
    pos = {m: torch.randn(16, generator=gen) for m in names}
    # distinct pool scores, so the hard negatives are the same on both devices
    pool = {m: torch.randperm(400, generator=gen)[:16 * 8].view(16, 8).float() / 50
            for m in names}
    weights = CrossModalWeights(hard_k=k, hard_negatives=source)
    total, terms = cross_modal_objective(pos, pool, weights)
    on_device = cross_modal_objective({m: v.to(CUDA) for m, v in pos.items()},
                                      {m: v.to(CUDA) for m, v in pool.items()}, weights)
    assert on_device[0].device.type == "cuda"
    assert on_device[0].item() == pytest.approx(total.item(), rel=1e-5)
    assert {t: v.item() for t, v in on_device[1].items()} == pytest.approx(
        {t: v.item() for t, v in terms.items()}, rel=1e-5)


@pytest.mark.parametrize("chunk_size", [3, 4096])
def test_evaluator_on_cuda_matches_cpu(chunk_size):
    gen = torch.Generator().manual_seed(chunk_size)
    num_users, num_items = 40, 90
    scores = torch.randn(num_users, num_items, generator=gen)
    train = torch.stack([torch.arange(num_users).repeat_interleave(3),
                         torch.randint(num_items, (3 * num_users,), generator=gen)])
    heldout = torch.stack([torch.arange(num_users).repeat_interleave(2),
                           torch.randint(num_items, (2 * num_users,), generator=gen)])
    heldout = heldout[:, ~torch.isin(heldout[0] * num_items + heldout[1],
                                     train[0] * num_items + train[1])]

    def evaluate(device):
        evaluator = Evaluator(PairIndex.from_edges(train, num_users, num_items, device),
                              PairIndex.from_edges(heldout, num_users, num_items, device),
                              chunk_size)
        table = scores.to(device)
        return evaluator.evaluate(lambda users: table[users], return_topk=True)

    cpu, cuda = evaluate("cpu"), evaluate(CUDA)
    assert cuda.metrics == pytest.approx(cpu.metrics, rel=1e-6)
    assert torch.equal(cuda.topk.cpu(), cpu.topk)


@pytest.mark.parametrize("name", ["lightgcn", "brmrs"])
def test_training_step_on_cuda_has_no_host_sync(name):
    r"""Sampling, the loss, its backward and the fused Adam step that training uses
    (``make_optimizer``) stay on the device: CUDA's sync debug mode turns any device-to-host
    synchronisation into an error."""
    data = tiny_data()
    model = build_model(MODELS.get(name), data)[0].to(CUDA)
    optimizer = make_optimizer(model, lr=1e-3)
    assert optimizer.param_groups[0]["fused"] is True
    index = PairIndex.from_edges(data.train, data.num_users, data.num_items, CUDA)
    users, pos = data.train.to(CUDA)

    def step():
        neg = sample_negatives(users, index, model.num_negatives)
        loss, terms = model.loss(Batch(users, pos, neg))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    step()  # warm-up: lazy CUDA initialisation and Adam's state may synchronise
    before = [p.detach().clone() for p in model.parameters()]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert loss.device.type == "cuda" and torch.isfinite(loss).item()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
