"""BR-MRS on PyTorch Geometric."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"
__all__ = ["__version__", "load_run"]

if TYPE_CHECKING:
    from brmrs_pyg.trained import load_run


def __getattr__(name: str) -> Any:
    # load_run imports torch, the data layer and every model: done on first use, so that
    # importing the package (which every submodule import does first) stays light
    if name == "load_run":
        from brmrs_pyg.trained import load_run
        return load_run
    raise AttributeError(f"module 'brmrs_pyg' has no attribute {name!r}")
