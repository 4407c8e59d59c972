r"""matplotlib, the optional extra ``plots``, imported in one place for every PNG the package
draws (diagnostics and experiment suites)."""
from __future__ import annotations

from typing import Any


class PlotsUnavailable(ImportError):
    r"""matplotlib is not installed; the message says how to install it."""


def pyplot() -> Any:
    r"""matplotlib's ``pyplot`` on the file-only Agg backend, or :class:`PlotsUnavailable`."""
    try:
        import matplotlib
    except ImportError:
        raise PlotsUnavailable("plots need matplotlib: pip install -e .[plots] (or "
                               "EXTRAS=test,plots ./setup.sh)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
