import numpy as np
import pytest

from hap.models import spec, training


def test_auc_matches_pair_counting_with_ties():
    pos = np.array([0.9, 0.5, 0.5])
    neg = np.array([0.5, 0.1])
    # pairs: (0.9>0.5, 0.9>0.1, 0.5=0.5 half, 0.5>0.1, 0.5=0.5 half, 0.5>0.1) = 5 / 6
    assert training.auc(pos, neg) == pytest.approx(5 / 6)
    assert training.auc(np.array([1.0]), np.array([2.0, 3.0])) == 0.0
    assert np.isnan(training.auc(np.array([]), neg))


def test_per_source_auc_contrasts_positives_with_each_source():
    g = spec.GROUP_INDEX
    groups = np.array([g["EP"], g["EP"], g["EN"], g["RN"], g["PRN"], g["GN"]])
    scores = np.array([0.8, 0.4, 0.6, 0.3, 0.1, 0.9])
    result = training.per_source_auc(scores, groups)
    assert result["auc_EP_vs_EN"] == pytest.approx(0.5)
    assert result["auc_EP_vs_RN"] == 1.0 and result["auc_EP_vs_PRN"] == 1.0
    assert result["auc_EP_vs_GN"] == 0.0
    assert result["auc_mean"] == pytest.approx(0.625)
