"""The threads default: the cores idle at the start, never more than torch's default."""
import os

import pytest
import torch

from brmrs_pyg import threads
from brmrs_pyg.threads import auto_threads, idle_cores, set_threads


def counters(*samples):
    r"""A sampler returning the given ``(idle, total)`` pairs in turn."""
    it = iter(samples)
    return lambda: next(it)


def test_idle_cores_from_counter_deltas(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    # 300 of 400 jiffies idle over the window: 3 of 4 cores
    assert idle_cores(0.0, counters((1000, 5000), (1300, 5400))) == pytest.approx(3.0)
    assert idle_cores(0.0, counters((1000, 5000), (1000, 5400))) == pytest.approx(0.0)
    assert idle_cores(0.0, counters((1000, 5000), (1000, 5000))) is None  # no time passed


def test_idle_cores_unreadable_counters():
    def fail():
        raise OSError("no /proc")
    assert idle_cores(0.0, fail) is None


def test_real_counters_are_read_on_linux():
    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat")
    idle = idle_cores(0.05)
    assert idle is not None and 0.0 <= idle <= os.cpu_count() + 1e-9


@pytest.mark.parametrize("idle, default, expected", [
    (2.0, 2, 2), (1.0, 2, 1), (1.4, 2, 1), (1.6, 2, 2), (0.1, 2, 1), (11.7, 8, 8),
    (None, 6, 6)])
def test_auto_threads(idle, default, expected):
    assert auto_threads(default, idle) == expected


def test_set_threads(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert set_threads(1, torch.device("cpu")) == 1 and torch.get_num_threads() == 1
        monkeypatch.setattr(threads, "TORCH_DEFAULT", 3)
        monkeypatch.setattr(threads, "idle_cores", lambda: 1.0)
        assert set_threads(0, torch.device("cpu")) == 1
        monkeypatch.setattr(threads, "idle_cores", lambda: 3.0)
        # a run that took fewer threads does not lower the next run's ceiling
        assert set_threads(0, torch.device("cpu")) == 3 and torch.get_num_threads() == 3
        monkeypatch.setattr(threads, "idle_cores", lambda: 0.0)
        assert set_threads(0, torch.device("cuda")) == 3
    finally:
        torch.set_num_threads(before)
