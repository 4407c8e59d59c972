"""The benchmark's own logic (benchmarks/): floors, their timing and ratios, the --scale sizes
and the fitted exponent of a cost curve."""
import argparse
import json
import math
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from brmrs_pyg.graphs import GraphSpec
from brmrs_pyg.recommenders import MODELS

from tiny_models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import benchmark  # noqa: E402
import floors  # noqa: E402
import scaling  # noqa: E402


def test_fit_exponent_recovers_a_power_law():
    sizes = [0.25, 0.5, 1, 2, 4]
    assert scaling.fit_exponent(sizes, [3.0 * s ** 1.7 for s in sizes]) == pytest.approx(1.7)
    assert scaling.fit_exponent(sizes, [5.0] * 5) == pytest.approx(0.0, abs=1e-12)
    # missing or non-positive values are left out, not fitted as log(0)
    assert scaling.fit_exponent([1, 2, 4], [2.0, None, 32.0]) == pytest.approx(2.0)
    assert math.isnan(scaling.fit_exponent([1, 2], [1.0, 0.0]))


def test_exponents_per_model_and_curve():
    rows = [{"model": m, "scale": s, "seconds_per_epoch": s ** e, "seconds_per_eval": s ** 2,
             "cpu_seconds_per_epoch": 2 * s ** e, "cpu_seconds_per_eval": s ** 2.5,
             "graph_s": 1.0, "peak_rss_mb": 100 * s, "users": 10 * s, "items": 5 * s,
             "train_interactions": 80 * s}
            for m, e in (("a", 1.0), ("b", 1.5)) for s in (1, 2, 4)]
    fitted = scaling.exponents(rows)
    assert fitted["a"]["seconds_per_epoch"] == pytest.approx(1.0)
    assert fitted["b"]["seconds_per_epoch"] == pytest.approx(1.5)
    assert fitted["b"]["seconds_per_eval"] == pytest.approx(2.0)
    assert fitted["a"]["graph_s"] == pytest.approx(0.0, abs=1e-12)
    (line,) = [r for r in scaling.table(rows).splitlines() if r.startswith("| b: exponent")]
    assert "| 1.50 | 1.50 | 2.00 | 2.50 | 0.00 | 1.00 |" in line


def test_scaled_generator_sizes():
    sports = {"num_users": 35598, "num_items": 18357, "mean_interactions": 8.33}
    assert scaling.scaled_generator(sports, 0.25) == "num_users=8900,num_items=4589"
    assert scaling.scaled_generator(sports, 4) == "num_users=142392,num_items=73428"
    assert scaling.scaled_generator(sports, 1) == ""  # the card's own data folder
    with pytest.raises(ValueError, match="positive"):
        scaling.scaled_generator(sports, 0)


def test_plot_without_matplotlib_says_it_skipped(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    message = scaling.plot([], tmp_path / "p.png")
    assert message.startswith("plot skipped") and not (tmp_path / "p.png").exists()


def test_epoch_floor_and_ratio():
    assert floors.epoch_floor([0.1, 0.2], [1.0], steps=10) == pytest.approx(4.0)
    assert floors.epoch_floor([0.5], [], steps=3) == pytest.approx(1.5)
    assert floors.floor_ratio(3.0, 2.0) == pytest.approx(1.5)
    assert floors.floor_ratio(1.0, 0.0) == math.inf


def test_time_op_takes_the_median_of_at_least_three_runs():
    calls = []
    op = floors.Op("count", lambda: calls.append(1))
    wall, cpu = floors.time_op(op, torch.device("cpu"), min_seconds=0.0)
    assert wall >= 0.0 and cpu >= 0.0
    assert len(calls) == 4  # one warm-up, then three timed runs


def test_measure_floor_counts_per_step_ops_per_step_and_per_epoch_ops_once(monkeypatch):
    seconds = {"a": (0.01, 0.02), "b": (0.03, 0.06), "c": (0.5, 1.0)}  # (wall, CPU)
    monkeypatch.setattr(floors, "time_op", lambda op, device: seconds[op.name])
    ops = [floors.Op("a", print), floors.Op("b", print), floors.Op("c", print, per_epoch=True)]
    out = floors.measure_floor(ops, torch.device("cpu"), steps=100)
    assert out["floor_step_s"] == pytest.approx(0.04)
    assert out["floor_epoch_s"] == pytest.approx(100 * 0.04 + 0.5)
    assert out["floor_cpu_epoch_s"] == pytest.approx(100 * 0.08 + 1.0)
    assert [o["op"] for o in out["floor_ops"]] == ["a", "b", "c"]


def test_every_model_declares_a_floor():
    assert set(floors.FLOORS) == set(MODELS.names())
    with pytest.raises(KeyError, match="no floor declared"):
        floors.floor_ops("nope", None, 8)


@pytest.mark.parametrize("name", sorted(MODELS.names()))
def test_floor_ops_of_every_model_run(name):
    cls = MODELS.get(name)
    # the cards' mm_weights name real modalities; the tiny data's are m0 and m1
    extra = {"mm_weights": ""} if "mm_weights" in {f.name for f in fields(cls.Params)} else {}
    model, _ = build_model(cls, spec=GraphSpec(knn_k=2, uu_k=2), **extra)
    model.train()
    model.start_epoch()
    # a training forward, as the benchmark's steps leave it (LATTICE keeps its epoch's graphs)
    model.branches() if hasattr(model, "branches") else model()
    ops = floors.floor_ops(name, model, batch_size=3)
    assert ops and all(isinstance(op, floors.Op) for op in ops)
    for op in ops:
        op.run()


def test_lightgcn_floor_is_its_propagation_and_batch_scores():
    model, _ = build_model(MODELS.get("lightgcn"), num_layers=3)
    names = [op.name for op in floors.floor_ops("lightgcn", model, batch_size=8)]
    nnz = model.adj_t._nnz()
    assert names == [f"ui: 3 x sparse (11, 11) nnz {nnz} x 4", "bpr: scores 8 x 2 x 4"]


def test_brmrs_floor_scores_each_modality_pool_and_the_fused_pair():
    model, _ = build_model(MODELS.get("brmrs"), pool_size=5)
    names = [op.name for op in floors.floor_ops("brmrs", model, batch_size=8)]
    # the backward reaches the positive, the uniform negative and one pick per modality
    assert [n for n in names if "scores" in n] == [
        "pool[m0]: scores 8 x 6 x 4, backward over 4", "pool[m1]: scores 8 x 6 x 4, "
        "backward over 4", "fused: scores 8 x 2 x 4"]
    model, _ = build_model(MODELS.get("brmrs"), pool_size=3, hard_k=2)
    names = [op.name for op in floors.floor_ops("brmrs", model, batch_size=8)]
    assert "pool[m0]: scores 8 x 4 x 4" in names  # 2 + 2 x 2 columns: the whole pool
    assert sum(n.startswith("proj[") for n in names) == 2
    # the channels propagate the user-item graph together: once, item side 2 x 4 wide
    assert [n.split(":")[0] for n in names if "sparse" in n or "blocks" in n] == [
        "ui (all channels)", "ii[m0]", "ii[m1]"]
    assert [n for n in names if "blocks" in n][0].endswith("x (8 + 4)")


def test_brmrs_floor_without_the_block_path_counts_each_channel():
    model, _ = build_model(MODELS.get("brmrs"), backbone="gcn")
    names = [op.name for op in floors.floor_ops("brmrs", model, batch_size=8)]
    assert {n.split(":")[0] for n in names if "sparse" in n} == {"ui[m0]", "ui[m1]", "ii[m0]",
                                                                "ii[m1]"}


def test_bipartite_propagation_multiplies_each_block_forward_and_backward(monkeypatch):
    to_users = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]]).to_sparse_csr()  # U=2, I=3
    to_items = to_users.to_dense().T.contiguous().to_sparse_csr()
    shapes = []
    real = torch.sparse.mm
    monkeypatch.setattr(torch.sparse, "mm",
                        lambda a, b: shapes.append((tuple(a.shape), tuple(b.shape))) or real(a, b))
    (op,) = floors.bipartite_propagation("g", to_users, to_items, wide=6, narrow=2, layers=2)
    op.run()
    # per layer: the U x I block on the items' 6-wide table and its transpose on a gradient,
    # then the I x U block on the users' 2-wide table and its transpose
    assert shapes == [((2, 3), (3, 6)), ((3, 2), (2, 6)), ((3, 2), (2, 2)), ((2, 3), (3, 2))] * 2


def test_propagation_op_does_the_forward_and_backward_products(monkeypatch):
    adj = torch.tensor([[0.0, 1.0], [0.5, 0.0]]).to_sparse_csr()
    shapes = []
    real = torch.sparse.mm
    monkeypatch.setattr(torch.sparse, "mm",
                        lambda a, b: shapes.append((a.to_dense().tolist(), b.shape)) or real(a, b))
    (op,) = floors.propagation("g", adj, width=3, layers=2)
    op.run()
    # per layer A then its transpose, each on a 3-wide table
    assert shapes == [([[0.0, 1.0], [0.5, 0.0]], (2, 3)), ([[0.0, 0.5], [1.0, 0.0]], (2, 3))] * 2
    assert floors.propagation("g", adj, width=3, layers=0) == []


def test_eval_floor_scores_every_user_chunk(monkeypatch):
    user, item = torch.randn(5, 4), torch.randn(7, 4)
    op = floors.eval_floor(user, item, num_users=5, chunk=2, k=3)
    rows = []
    real = torch.Tensor.topk
    monkeypatch.setattr(torch.Tensor, "topk",
                        lambda self, k, dim: rows.append((self.shape, k)) or real(self, k, dim))
    op.run()
    assert rows == [((2, 7), 3), ((2, 7), 3), ((1, 7), 3)]


def test_gpu_check_skips_cleanly_without_cuda(tmp_path):
    out = tmp_path / "gpu.txt"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(["bash", str(script), str(out)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "skipped, no CUDA device" in done.stdout
    assert out.read_text().startswith("gpu_check: skipped, no CUDA device")


def test_epoch_floor_repeats_per_epoch_work_as_a_scaled_step_timing_does():
    # 100 steps timed as 10 and scaled x10: the once-per-epoch work is in the timing 10 times
    assert floors.epoch_floor([0.01], [2.0], steps=100, epochs=10.0) == pytest.approx(21.0)


@pytest.mark.needs_extra("plots")
def test_plot_writes_a_png_with_matplotlib(tmp_path):
    rows = [{"model": m, "scale": s, "seconds_per_epoch": s, "peak_rss_mb": 10 * s}
            for m in ("lightgcn", "brmrs") for s in (0.5, 1, 2)]
    assert scaling.plot(rows, tmp_path / "p.png") == f"plot written to {tmp_path / 'p.png'}"
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_scale_runs_generate_each_scale_before_measuring_any_model(monkeypatch, tmp_path):
    # the first model's process used to generate the data too, so its peak memory was the
    # generator's: each scale must be generated, in its own process, before any model runs
    events = []

    def fake_prepare(dataset, model, opts):
        events.append(("prepare", opts.generator))

    def fake_run(dataset, model, opts):
        assert ("prepare", opts.generator) in events, "measured before it was generated"
        events.append((model, opts.generator))
        return {"seconds_per_epoch": 1.0, "cpu_seconds_per_epoch": 1.0,
                "seconds_per_eval": 1.0, "model": model}

    monkeypatch.setattr(benchmark, "prepare_one", fake_prepare)
    monkeypatch.setattr(benchmark, "run_one", fake_run)
    monkeypatch.setattr(benchmark, "report", lambda row: None)
    args = argparse.Namespace(scale=[0.5, 2], scale_dataset="synthetic_sports",
                              models=["lightgcn", "brmrs"], out=None)
    benchmark.scale_runs(args, benchmark.Options())
    half, double = "num_users=17799,num_items=9178", "num_users=71196,num_items=36714"
    assert events == [("prepare", half), ("lightgcn", half), ("brmrs", half),
                      ("prepare", double), ("lightgcn", double), ("brmrs", double)]


def test_prepare_generates_a_synthetic_folder_in_its_own_process(tmp_path):
    folder = tmp_path / "gen"
    opts = benchmark.Options(generator="num_users=120,num_items=90")
    done = benchmark.prepare_one(f"synthetic_tiny:{folder}", "lightgcn", opts)
    assert done["prepare_s"] > 0 and done["peak_rss_mb"] > 0
    stamp = json.loads((folder / "generator.json").read_text())
    assert (stamp["num_users"], stamp["num_items"]) == (120, 90)
    assert (folder / "synthetic_tiny.inter").is_file()
    # a dataset that is read, not generated, needs nothing
    assert benchmark.prepare_one(f"lfm2k:{tmp_path / 'absent'}", "lightgcn", opts) is None


def test_an_unknown_dataset_stops_with_the_reason_not_a_traceback():
    with pytest.raises(SystemExit, match="dataset nonexistent: no dataset card"):
        benchmark.prepare_one("nonexistent", "lightgcn", benchmark.Options())
