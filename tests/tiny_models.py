"""The tiny interaction set of the model tests (5 users, 6 items, up to a few modalities) and
the one way they build a model on it."""
import torch

from brmrs_pyg.config import resolve
from brmrs_pyg.data.mmrec import InteractionData
from brmrs_pyg.graphs import GraphSpec, build_graph


def tiny_data(num_modalities=2):
    gen = torch.Generator().manual_seed(0)
    train = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3, 4], [0, 1, 1, 2, 3, 4, 0, 5, 2]])
    features = {f"m{i}": torch.randn(6, 3 + i, generator=gen) for i in range(num_modalities)}
    return InteractionData(name="t", num_users=5, num_items=6, train=train,
                           valid=torch.tensor([[0], [2]]), test=torch.tensor([[1], [3]]),
                           features=features)


def build_model(cls, data=None, spec=None, **overrides):
    """``cls`` built from its params (defaults plus ``overrides``) on ``data`` (default:
    :func:`tiny_data`) with seed 0 and ``embedding_dim=4``; returns ``(model, graph)``."""
    data = data or tiny_data()
    params = resolve([("test", overrides)], cls.Params).model
    torch.manual_seed(0)
    graph = build_graph(data, spec or GraphSpec(knn_k=2))
    return cls.from_data(params, graph, data.features, embedding_dim=4), graph
