import sys

import pytest

from brmrs_pyg import allocator
from brmrs_pyg.allocator import (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, MMAP_THRESHOLD,
                                 TRIM_THRESHOLD, USER_SETTINGS, reuse_freed_memory)


class FakeLibc:
    def __init__(self, answer=1):
        self.calls, self.answer = [], answer

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return self.answer


@pytest.fixture
def no_user_settings(monkeypatch):
    for name in USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)


def test_sets_the_mapping_and_trim_thresholds(no_user_settings):
    libc = FakeLibc()
    assert reuse_freed_memory(libc)
    assert libc.calls == [(M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)]


def test_a_refusal_is_reported(no_user_settings):
    assert not reuse_freed_memory(FakeLibc(answer=0))


@pytest.mark.parametrize("name", USER_SETTINGS)
def test_the_users_own_malloc_settings_are_kept(monkeypatch, no_user_settings, name):
    monkeypatch.setenv(name, "131072")
    libc = FakeLibc()
    assert not reuse_freed_memory(libc)
    assert libc.calls == []


def test_without_a_c_library_nothing_is_set(monkeypatch, no_user_settings):
    monkeypatch.setattr(allocator, "_libc", lambda: None)
    assert not reuse_freed_memory()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux's")
def test_glibc_accepts_the_settings(no_user_settings):
    if allocator._libc() is None:
        pytest.skip("no mallopt in this C library")
    assert reuse_freed_memory()


def test_rows_per_block_keeps_a_cpu_block_at_or_under_the_mapping_threshold():
    row = 4 * 18357  # a Sports-size row of float scores
    rows = allocator.rows_per_block(4096, row)
    assert rows * row <= MMAP_THRESHOLD < (rows + 1) * row
    assert allocator.rows_per_block(100, row) == 100  # fewer rows than fit: all of them
    assert allocator.rows_per_block(4096, MMAP_THRESHOLD + 1) == 1  # one row too wide: one
    assert allocator.rows_per_block(4096, row, cpu=False) == 4096  # a GPU: as asked
