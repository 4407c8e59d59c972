r"""Data layer: dataset cards, the MMRec-format reader with validation, the synthetic
generator, the per-user split and the cold-start item split."""
from brmrs_pyg.data.cards import DatasetCard, ModalitySpec, load_card
from brmrs_pyg.data.coldstart import ColdItems, cold_item_split
from brmrs_pyg.data.errors import DataError, MissingFilesError
from brmrs_pyg.data.mmrec import InteractionData, load_dataset, read_features, read_inter

__all__ = [
    "ColdItems", "DataError", "DatasetCard", "InteractionData", "MissingFilesError", "ModalitySpec",
    "cold_item_split", "load_card", "load_dataset", "read_features", "read_inter",
]
