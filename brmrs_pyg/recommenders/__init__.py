r"""Recommenders: each turns graphs and features into user/item embeddings, no I/O.

Importing this package registers every model in :data:`MODELS`.
"""
from brmrs_pyg.recommenders.base import MODELS, Batch, Recommender
from brmrs_pyg.recommenders.bm3 import BM3
from brmrs_pyg.recommenders.brmrs import BRMRS
from brmrs_pyg.recommenders.concat import Concat
from brmrs_pyg.recommenders.decoupled import Decoupled
from brmrs_pyg.recommenders.dragon import DRAGON
from brmrs_pyg.recommenders.dualgnn import DualGNN
from brmrs_pyg.recommenders.freedom import FREEDOM
from brmrs_pyg.recommenders.grcn import GRCN
from brmrs_pyg.recommenders.lattice import LATTICE
from brmrs_pyg.recommenders.lgmrec import LGMRec
from brmrs_pyg.recommenders.lightgcn import LightGCN
from brmrs_pyg.recommenders.mgcn import MGCN
from brmrs_pyg.recommenders.mf import MF
from brmrs_pyg.recommenders.mmgcn import MMGCN
from brmrs_pyg.recommenders.vbpr import VBPR

__all__ = ["BM3", "BRMRS", "Concat", "DRAGON", "Decoupled", "DualGNN", "FREEDOM", "GRCN",
           "LATTICE", "LGMRec", "MGCN", "MMGCN", "MODELS", "Batch", "LightGCN", "MF", "Recommender",
           "VBPR"]
