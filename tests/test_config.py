from dataclasses import dataclass

import pytest

from brmrs_pyg.config import ConfigError, RunConfig, coerce, option, resolve
from brmrs_pyg.recommenders.branched import CrossModalParams


@dataclass(frozen=True)
class Params:
    num_layers: int = option(3, "layers")
    reg_weight: float = option(1e-4, "L2")


def test_layers_override_in_order():
    cfg = resolve([("card", {"knn_k": 5, "num_layers": 1}), ("cli", {"num_layers": "2"})],
                  Params)
    assert cfg.run.knn_k == 5 and cfg.model.num_layers == 2
    assert cfg.flat()["num_layers"] == 2 and cfg.flat()["batch_size"] == 2048


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'lerning_rate' \(cli\).*lr.*num_layers"):
        resolve([("cli", {"lerning_rate": "0.1"})], Params)


@pytest.mark.parametrize("key,close", [("num_layer", "num_layers"), ("reg_wieght", "reg_weight"),
                                       ("batchsize", "batch_size"), ("lamda_h", "lambda_h")])
def test_unknown_key_suggests_the_closest_valid_key(key, close):
    with pytest.raises(ConfigError, match=rf"unknown key '{key}' \(cli\); did you mean "
                                          rf"'{close}'\? valid keys: .*num_layers"):
        resolve([("cli", {key: "1"})], Params, CrossModalParams)


def test_unknown_key_far_from_every_key_has_no_suggestion():
    with pytest.raises(ConfigError) as info:
        resolve([("cli", {"zzzz": "1"})], Params)
    assert "did you mean" not in str(info.value) and "valid keys: " in str(info.value)


@pytest.mark.parametrize("key,value", [("epochs", "ten"), ("lr", "fast"), ("save_topk", "maybe"),
                                       ("num_layers", 2.5), ("save_topk", 1)])
def test_wrong_types_are_errors(key, value):
    with pytest.raises(ConfigError, match=key):
        resolve([("cli", {key: value})], Params)


def test_coercions():
    assert coerce("lr", "1e-3", float, "cli") == 0.001
    assert coerce("lr", 1, float, "card") == 1.0
    assert coerce("save_topk", "true", bool, "cli") is True
    assert coerce("save_topk", "off", bool, "cli") is False


@pytest.mark.parametrize("overrides,match", [({"epochs": 0}, "epochs"),
                                             ({"valid_metric": "auc@20"}, "valid_metric"),
                                             ({"valid_metric": "recall@7"}, "valid_metric"),
                                             ({"lr": -1.0}, "lr"),
                                             ({"threads": -1}, "threads must be >= 0"),
                                             ({"min_epochs": -1},
                                              "min_epochs must be >= 0"),
                                             ({"checkpoint_every": -5},
                                              "checkpoint_every must be >= 0")])
def test_value_checks(overrides, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig(**overrides)
