r"""Last.fm-2K (multimodal) from its public source into ``datasets/lfm2k/``.

The source is the public repository ``giuspillo/extending_sota_data_mm_feat`` on GitHub (paper
"See the Movie, Hear the Song, Read the Book: Extending MovieLens-1M, Last.fm 2K, and DBbook
with Multimodal Data"; the files below are those of its commit e8c90c3). From a clone or an
unpacked archive of it:

.. code-block:: text

    4_mmrec/data/lfm2k/lfm2k.inter                  -> lfm2k.inter
    4_mmrec/data/lfm2k/all-MiniLM-L6-v2.npy         -> text_feat.npy
    4_mmrec/data/lfm2k/whisper.npy                  -> whisper.npy
    4_mmrec/data/lfm2k/vggish.npy                   -> vggish.npy
    3_data_processing/hetrec2011-lastfm-2k/lfm2k_text.tsv -> lfm2k_text.tsv
    (built) i_id_mapping.tsv: itemID, artistID[, name]

The item map is not in the repository: row :math:`j` of ``processed_data/lfm2k_og_ids.inter``
is row :math:`j` of ``lfm2k.inter`` with the original HetRec artist id in place of the item id,
so the two files give each item id its artist id; names come from ``original_data/artists.dat``
when present. ``lfm2k_text.tsv`` holds each artist's tag text, from which the ``lfm2k_text``
card rebuilds the text modality.
"""
from __future__ import annotations

import logging
from pathlib import Path

from brmrs_pyg.data.cards import load_card
from brmrs_pyg.data.errors import DataError
from brmrs_pyg.data.mmrec import InteractionData, load_dataset
from brmrs_pyg.data.prepare.writer import Output, check_writable
from brmrs_pyg.data.tables import read_table
from brmrs_pyg.io import atomic_copy, atomic_write_text

log = logging.getLogger(__name__)

MMREC_DIR = "4_mmrec/data/lfm2k"
HETREC_DIR = "3_data_processing/hetrec2011-lastfm-2k"
#: Target name in the dataset folder -> path in the repository.
COPIED = {
    "lfm2k.inter": f"{MMREC_DIR}/lfm2k.inter",
    "text_feat.npy": f"{MMREC_DIR}/all-MiniLM-L6-v2.npy",
    "whisper.npy": f"{MMREC_DIR}/whisper.npy",
    "vggish.npy": f"{MMREC_DIR}/vggish.npy",
    "lfm2k_text.tsv": f"{HETREC_DIR}/lfm2k_text.tsv",
}
OG_IDS = f"{HETREC_DIR}/processed_data/lfm2k_og_ids.inter"
ARTISTS = f"{HETREC_DIR}/original_data/artists.dat"


def item_map(inter: Path, og_ids: Path, artists: Path | None) -> str:
    r"""The text of ``i_id_mapping.tsv`` (``itemID  artistID  [name]``) from the row-aligned
    ``lfm2k.inter`` and ``lfm2k_og_ids.inter`` (module docstring)."""
    ours, theirs = read_table(inter), read_table(og_ids)
    if len(ours.rows) != len(theirs.rows):
        raise DataError(f"{og_ids} has {len(theirs.rows)} rows, {inter} has {len(ours.rows)}; "
                        "they must be the same interactions row by row")
    artist_of: dict[int, str] = {}
    for n, (item, artist) in enumerate(zip(ours.column("itemID"), theirs.column("itemID"))):
        if artist_of.setdefault(int(item), artist) != artist:
            raise DataError(f"{og_ids}, line {n + 2}: item {item} is artist {artist} here but "
                            f"{artist_of[int(item)]} on an earlier line")
    if sorted(artist_of) != list(range(len(artist_of))):
        raise DataError(f"{inter}: item ids are not 0..{len(artist_of) - 1}")
    names: dict[str, str] = {}
    if artists is not None:
        table = read_table(artists, sep="\t")
        names = dict(zip(table.column("id"), table.column("name")))
    header = "itemID\tartistID" + ("\tname" if names else "")
    lines = [header] + [f"{i}\t{artist_of[i]}" + (f"\t{names.get(artist_of[i], '')}"
                                                  if names else "")
                        for i in range(len(artist_of))]
    return "\n".join(lines) + "\n"


def prepare_lfm2k(repo: Path, output: Output) -> InteractionData:
    r"""Copies lfm2k from a clone of its public repository into ``output.folder`` and builds
    the item map; the result is read back under the card ``output.cards_dir/<name>.yaml``.

    Args:
        repo (Path): Root of a clone (or unpacked archive) of
            ``giuspillo/extending_sota_data_mm_feat``.
        output (Output): Dataset name (``lfm2k``), folder and cards folder.
    """
    repo = Path(repo)
    needed = [*COPIED.values(), OG_IDS]
    missing = [p for p in needed if not (repo / p).is_file()]
    if missing:
        raise DataError(f"{repo} is not a clone of giuspillo/extending_sota_data_mm_feat with "
                        f"its lfm2k files: missing {', '.join(missing)}")
    check_writable(output.folder, [*COPIED, "i_id_mapping.tsv"], None, output.force)
    artists = repo / ARTISTS if (repo / ARTISTS).is_file() else None
    mapping = item_map(repo / COPIED["lfm2k.inter"], repo / OG_IDS, artists)
    for target, source in COPIED.items():
        atomic_copy(repo / source, output.folder / target)
    atomic_write_text(output.folder / "i_id_mapping.tsv", mapping)
    log.info("lfm2k copied from %s into %s", repo, output.folder)
    return load_dataset(load_card(output.name, output.cards_dir), output.folder,
                        "text,whisper,vggish")
