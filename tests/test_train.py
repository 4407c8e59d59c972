import dataclasses
import math
import re
import time

import pytest
import torch

from brmrs_pyg.checkpoint import TRAINING_CHECKPOINT
from brmrs_pyg.evaluation import EvalResult, Evaluator
from brmrs_pyg.interactions import PairIndex
from brmrs_pyg.recommenders import MF
from brmrs_pyg import train as train_module
from brmrs_pyg.train import Checkpointing, TrainingError, TrainSettings, train


class ScriptedEvaluator:
    """Returns a scripted recall@20 per call; records which epoch's weights it saw."""

    def __init__(self, values):
        self.values = list(values)
        self.calls = 0

    def evaluate(self, scorer, return_topk=False):
        value = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        return EvalResult(metrics={"recall@20": value, "ndcg@20": value / 2}, num_users=1,
                          tie_rate=0.0)


def setup(num_users=4, num_items=6):
    edges = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]])
    index = PairIndex.from_edges(edges, num_users, num_items)
    model = MF(num_users, num_items, 4, reg_weight=0.0)
    return model, edges, index


def test_early_stopping_reports_test_at_best_valid_epoch(tmp_path):
    model, edges, index = setup()
    valid = ScriptedEvaluator([0.1, 0.3, 0.2, 0.25, 0.29, 0.5])
    test = ScriptedEvaluator([0.11, 0.33, 0.99])  # called only when valid improves
    settings = TrainSettings(epochs=50, batch_size=2, patience=3, progress=False)
    result = train(model, edges, index, valid, test, settings,
                   Checkpointing(tmp_path, every=0, meta={"config": {"k": 1}}))
    assert result.best_epoch == 2 and result.epochs_run == 5 and result.stopped_early
    assert result.valid["recall@20"] == 0.3 and result.test["recall@20"] == 0.33
    assert test.calls == 2
    ckpt = torch.load(tmp_path / "best.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["config"] == {"k": 1}
    assert ckpt["valid"]["recall@20"] == 0.3 and ckpt["test"]["recall@20"] == 0.33
    assert not (tmp_path / "last.pt").exists()  # every=0: no training checkpoint
    # the model ends with the best epoch's weights, which are those in the checkpoint
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt["model"][key])


def test_runs_all_epochs_without_patience_running_out():
    model, edges, index = setup()
    valid = ScriptedEvaluator([0.1 * e for e in range(1, 10)])
    result = train(model, edges, index, valid, ScriptedEvaluator([0.0]),
                   TrainSettings(epochs=4, batch_size=3, patience=2, progress=False))
    assert result.best_epoch == 4 and result.epochs_run == 4 and not result.stopped_early
    assert set(result.last_losses) == {"loss", "bpr", "reg"}


@pytest.mark.parametrize("min_epochs,epochs_run", [(0, 3), (2, 3), (7, 7)])
def test_early_stopping_waits_for_min_epochs(min_epochs, epochs_run):
    # valid peaks at epoch 1: patience 2 ends the run after epoch 3, or at min_epochs if later;
    # the best epoch stays the first either way
    model, edges, index = setup()
    valid = ScriptedEvaluator([0.5] + [0.1] * 20)
    result = train(model, edges, index, valid, ScriptedEvaluator([0.4]),
                   TrainSettings(epochs=20, batch_size=2, patience=2, min_epochs=min_epochs,
                                 progress=False))
    assert result.epochs_run == epochs_run and result.stopped_early
    assert result.best_epoch == 1 and valid.calls == epochs_run


def test_the_epoch_line_shows_that_epochs_training_time(monkeypatch, caplog):
    model, edges, index = setup()
    epoch, naps = train_module.train_epoch, iter([0.0, 0.3])

    def timed_epoch(*args, **kwargs):
        time.sleep(next(naps))
        return epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_epoch", timed_epoch)
    caplog.set_level("INFO", logger="brmrs_pyg")
    result = train(model, edges, index, ScriptedEvaluator([0.1, 0.2]), ScriptedEvaluator([0.1]),
                   TrainSettings(epochs=2, batch_size=4, progress=False))
    lines = [re.fullmatch(r"epoch +\d+ \|.*\| ([\d.]+)s train", r.getMessage())
             for r in caplog.records]
    first, second = [float(m[1]) for m in lines if m]
    assert first < 0.15 and second >= 0.3  # not their running mean, about 0.15 at epoch 2
    assert result.seconds_per_epoch == pytest.approx((first + second) / 2, abs=0.01)


def test_nan_loss_stops_with_the_term_named():
    model, edges, index = setup()
    with torch.no_grad():
        model.user_emb.weight[0, 0] = float("nan")
    with pytest.raises(TrainingError, match="bpr") as exc:
        train(model, edges, index, ScriptedEvaluator([0.1]), ScriptedEvaluator([0.1]),
              TrainSettings(epochs=2, batch_size=4, progress=False))
    assert "epoch 1:" in str(exc.value) and "No checkpoint was being written" in str(exc.value)


def nan_at_epoch(model, epoch, batches_per_epoch, term="syn"):
    r"""Makes ``model.loss`` return a NaN ``term`` (and total) from ``epoch`` on."""
    original, calls = model.loss, [0]

    def loss(batch):
        calls[0] += 1
        total, terms = original(batch)
        terms = {**terms, term: total.detach() * 0}
        if calls[0] > (epoch - 1) * batches_per_epoch:
            terms[term] = terms[term] + float("nan")
            total = total + terms[term]
        return total, terms

    model.loss = loss


def test_nan_at_epoch_3_names_term_and_epoch_and_keeps_good_checkpoints(tmp_path):
    model, edges, index = setup()
    nan_at_epoch(model, epoch=3, batches_per_epoch=2)
    valid = ScriptedEvaluator([0.1, 0.2, 0.3, 0.4])
    settings = TrainSettings(epochs=10, batch_size=2, patience=5, progress=False)
    with pytest.raises(TrainingError) as exc:
        train(model, edges, index, valid, ScriptedEvaluator([0.5]), settings,
              Checkpointing(tmp_path, every=1, meta={"config": {"k": 1}}))
    message = str(exc.value)
    assert message.startswith("epoch 3: loss term(s) loss, syn became NaN or infinite")
    assert "bpr" not in message and "reg" not in message
    assert "best.pt holds the best epoch so far, 2 (valid recall@20 0.2000" in message
    assert "last.pt holds epoch 2" in message
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert best["epoch"] == 2 and best["test"]["recall@20"] == 0.5
    assert last["epoch"] == 2 and last["state"]["best_epoch"] == 2
    for weights in (best["model"], last["model"], last["state"]["best_weights"]):
        assert all(torch.isfinite(w).all() for w in weights.values())
    assert all(math.isfinite(h["loss"]) for h in last["state"]["history"])


def test_non_finite_scores_at_evaluation_stop_training(tmp_path):
    model, edges, index = setup()
    valid = Evaluator(index, PairIndex.from_edges(torch.tensor([[0, 1], [4, 5]]), 4, 6))
    original, calls = model.scorer, [0]

    def scorer():
        calls[0] += 1
        score = original()
        # calls 1 and 2: valid and test of epoch 1; call 3: valid of epoch 2
        return (lambda users: score(users) * float("inf")) if calls[0] >= 3 else score

    model.scorer = scorer
    with pytest.raises(TrainingError, match="epoch 2: the validation scores contain NaN or "
                                            "inf: the model's embeddings are no longer finite"):
        train(model, edges, index, valid, valid,
              TrainSettings(epochs=5, batch_size=4, progress=False), Checkpointing(tmp_path))
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 1


def tiny_problem(seed=0, num_users=12, num_items=10):
    r"""A random split: every user has 3 training, 1 valid and 1 test item."""
    gen = torch.Generator().manual_seed(seed)
    rows = {name: [] for name in ("train", "valid", "test")}
    for u in range(num_users):
        items = torch.randperm(num_items, generator=gen)[:5].tolist()
        for name, chosen in (("train", items[:3]), ("valid", items[3:4]), ("test", items[4:])):
            rows[name] += [(u, i) for i in chosen]
    edges = {k: torch.tensor(v).T for k, v in rows.items()}
    index = PairIndex.from_edges(edges["train"], num_users, num_items)
    evals = {k: Evaluator(index, PairIndex.from_edges(edges[k], num_users, num_items))
             for k in ("valid", "test")}
    return edges["train"], index, evals


def fresh_model():
    torch.manual_seed(7)
    return MF(12, 10, 4, reg_weight=1e-3)


def test_resumed_training_is_bit_identical_to_an_uninterrupted_one(tmp_path):
    edges, index, evals = tiny_problem()
    settings = TrainSettings(epochs=8, batch_size=5, lr=0.05, patience=100, progress=False)
    full = fresh_model()
    expected = train(full, edges, index, evals["valid"], evals["test"], settings,
                     Checkpointing(tmp_path / "full", every=0))
    # the same run stopped after epoch 3 (a checkpoint every 3 epochs), then resumed
    part = fresh_model()
    train(part, edges, index, evals["valid"], evals["test"],
          dataclasses.replace(settings, epochs=3),
          Checkpointing(tmp_path / "cut", every=3))
    payload = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert payload["kind"] == TRAINING_CHECKPOINT and payload["epoch"] == 3
    torch.manual_seed(12345)  # whatever ran in between, the checkpoint's RNG state wins
    resumed = fresh_model()
    got = train(resumed, edges, index, evals["valid"], evals["test"], settings,
                Checkpointing(tmp_path / "cut", every=3), resume=payload)
    assert got.best_epoch == expected.best_epoch and got.epochs_run == 8
    assert got.valid == expected.valid and got.test == expected.test
    assert got.history == expected.history and got.last_losses == expected.last_losses
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    best = torch.load(tmp_path / "cut" / "best.pt", weights_only=True)
    assert best["epoch"] == expected.best_epoch
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["epoch"] == 8


def test_resuming_a_finished_run_only_reports_it(tmp_path):
    edges, index, evals = tiny_problem()
    settings = TrainSettings(epochs=4, batch_size=5, lr=0.05, progress=False)
    first = train(fresh_model(), edges, index, evals["valid"], evals["test"], settings,
                  Checkpointing(tmp_path, every=3))
    payload = torch.load(tmp_path / "last.pt", weights_only=True)
    assert payload["epoch"] == 4  # written when training ends, although 4 % 3 != 0
    again = train(fresh_model(), edges, index, evals["valid"], evals["test"], settings,
                  Checkpointing(tmp_path, every=3), resume=payload)
    assert (again.best_epoch, again.test, again.history) == (first.best_epoch, first.test,
                                                             first.history)


def test_make_optimizer_is_fused_adam_and_equals_adam_by_hand():
    """The fused Adam of ``make_optimizer`` against Adam written out (bias-corrected moments)
    over 30 steps of random gradients, and against PyTorch's unfused loop, to float rounding."""
    torch.manual_seed(0)
    model = torch.nn.Linear(7, 5)
    optimizer = train_module.make_optimizer(model, lr=0.01)
    assert optimizer.param_groups[0]["fused"] is True
    reference = torch.nn.Linear(7, 5)
    reference.load_state_dict(model.state_dict())
    unfused = torch.optim.Adam(reference.parameters(), lr=0.01, foreach=False)
    hand = [p.detach().clone().double() for p in model.parameters()]
    start = model.weight.detach().clone()
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in hand]
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 0.01
    for step in range(1, 31):
        grads = [torch.randn_like(p) for p in model.parameters()]
        for params, opt in ((model.parameters(), optimizer), (reference.parameters(), unfused)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
        for p, (m, v), g in zip(hand, moments, grads):
            m.mul_(b1).add_((1 - b1) * g.double())
            v.mul_(b2).add_((1 - b2) * g.double() ** 2)
            p -= lr * (m / (1 - b1 ** step)) / ((v / (1 - b2 ** step)).sqrt() + eps)
    for p, q, h in zip(model.parameters(), reference.parameters(), hand):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(p.detach().double(), h, rtol=1e-5, atol=1e-6)
    assert (model.weight.detach() - start).abs().min() > 1e-3  # every weight moved


def test_make_optimizer_leaves_unsupported_devices_to_pytorch():
    model = torch.nn.Linear(3, 2, device="meta")
    assert train_module.make_optimizer(model, lr=0.1).param_groups[0]["fused"] is None
