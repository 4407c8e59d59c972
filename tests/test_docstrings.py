"""The examples in the package's docstrings run and print what they show (so they cannot rot
unnoticed: two had, on float rounding)."""
import doctest
import importlib
import pkgutil

import pytest

import brmrs_pyg

MODULES = sorted(info.name for info in pkgutil.walk_packages(brmrs_pyg.__path__, "brmrs_pyg."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed"
