r"""Data layer: dataset cards, the MMRec-format reader with validation, the synthetic
generator and the per-user split."""
from brmrs_pyg.data.cards import DatasetCard, ModalitySpec, load_card
from brmrs_pyg.data.errors import DataError, MissingFilesError
from brmrs_pyg.data.mmrec import InteractionData, load_dataset, read_features, read_inter

__all__ = [
    "DataError", "DatasetCard", "InteractionData", "MissingFilesError", "ModalitySpec",
    "load_card", "load_dataset", "read_features", "read_inter",
]
