import pytest
import torch

from brmrs_pyg.evaluation import EvalResult
from brmrs_pyg.interactions import PairIndex
from brmrs_pyg.recommenders import MF
from brmrs_pyg.train import TrainingError, TrainSettings, train


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
    result = train(model, edges, index, valid, test, settings, checkpoint=tmp_path / "b.pt",
                   config={"k": 1})
    assert result.best_epoch == 2 and result.epochs_run == 5 and result.stopped_early
    assert result.valid["recall@20"] == 0.3 and result.test["recall@20"] == 0.33
    assert test.calls == 2
    ckpt = torch.load(tmp_path / "b.pt", weights_only=False)
    assert ckpt["epoch"] == 2 and ckpt["config"] == {"k": 1}
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


def test_nan_loss_stops_with_the_term_named():
    model, edges, index = setup()
    with torch.no_grad():
        model.user_emb.weight[0, 0] = float("nan")
    with pytest.raises(TrainingError, match="bpr"):
        train(model, edges, index, ScriptedEvaluator([0.1]), ScriptedEvaluator([0.1]),
              TrainSettings(epochs=2, batch_size=4, progress=False))
