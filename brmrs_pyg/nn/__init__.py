r"""Neural building blocks: graph backbones behind one contract."""
from brmrs_pyg.nn.backbones import BACKBONES, Backbone, LightGCNBackbone

__all__ = ["BACKBONES", "Backbone", "LightGCNBackbone"]
