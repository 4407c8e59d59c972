#!/usr/bin/env python
"""Train and evaluate a recommender: ``python run.py --help``."""
from pathlib import Path

from brmrs_pyg.cli import main

if __name__ == "__main__":
    raise SystemExit(main(root=Path(__file__).resolve().parent))
