"""Pieces shared by MMGCN and GRCN: the modality inputs (the shared loss is checked in
test_mmgcn.py and test_grcn.py)."""
import torch

from brmrs_pyg.recommenders.modal_gcn import ModalityInputs


def test_modality_inputs_are_preference_and_projected_features():
    feats = {"a": torch.randn(5, 3), "b": torch.randn(5, 2)}
    torch.manual_seed(0)
    inputs = ModalityInputs(4, feats, dim=6)
    for m, x in feats.items():
        pref, content = inputs(m)
        assert pref.shape == (4, 6) and content.shape == (5, 6)
        assert pref is inputs.preference[m]
        torch.testing.assert_close(content, x @ inputs.proj[m].weight.T + inputs.proj[m].bias)
