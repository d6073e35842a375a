"""Novelty metrics: hand-computed counts and rates, zero denominators, AUROC, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from boxhack.errors import BoxhackError
from boxhack.models.layers import collect
from boxhack.monitor import BoxMonitor
from boxhack.monitor.evaluation import evaluate_novelty, novelty_metrics


def test_hand_computed_metrics():
    pred = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    labels = np.array([0, 0, 1, 1, 2, 2, 1, 0])  # last two misclassified
    acc = np.array([1, 1, 1, 0, 1, 1, 0, 1], dtype=bool)
    score = np.array([0, 0, 0, 0.5, 0, 0, 2.0, 0])
    novel_acc = np.array([0, 0, 1, 0], dtype=bool)
    novel_score = np.array([3.0, 1.0, 0.0, 0.7])
    m = novelty_metrics(pred, labels, acc, score, novel_acc, novel_score)
    assert m["n_known"] == 8 and m["n_correct"] == 6 and m["n_misclassified"] == 2
    assert m["accuracy"] == 6 / 8
    assert m["correct_accepted"] == 5 and m["correct_rejected"] == 1
    assert m["acceptance_rate"] == 5 / 6
    assert m["false_warning_rate"] == 1 / 6
    assert m["misclassified_rejected"] == 1 and m["detection_rate"] == 0.5
    assert m["n_novel"] == 4 and m["novel_rejected"] == 3
    assert m["novelty_detection_rate"] == 0.75
    # AUROC of correct (negatives: 0,0,0,0.5,0,0) vs novel (3, 1, 0, 0.7):
    # pairs won: 3 -> 6, 1 -> 6, 0.7 -> 6, 0 -> ties with 5 zeros (2.5), loses to 0.5
    assert m["auroc"] == pytest.approx((6 + 6 + 6 + 2.5) / 24)
    # misclassified scores (2.0, 0) vs correct
    assert m["auroc_misclassified"] == pytest.approx((6 + 2.5) / 12)
    json.dumps(m)


def test_zero_denominators_are_none():
    pred = labels = np.array([0, 1, 1])
    m = novelty_metrics(pred, labels, np.ones(3, bool), np.zeros(3))
    assert m["detection_rate"] is None  # nothing misclassified
    assert m["auroc_misclassified"] is None
    assert m["novelty_detection_rate"] is None and m["auroc"] is None and m["n_novel"] == 0
    all_wrong = novelty_metrics(np.array([1, 0]), np.array([0, 1]), np.zeros(2, bool))
    assert all_wrong["acceptance_rate"] is None and all_wrong["false_warning_rate"] is None
    assert all_wrong["detection_rate"] == 1.0
    m = novelty_metrics(pred, labels, np.ones(3, bool), np.zeros(3), np.zeros(0, bool), np.zeros(0))
    assert m["novelty_detection_rate"] is None and m["auroc"] is None


def test_infinite_scores_rank_highest():
    m = novelty_metrics(np.array([0, 0]), np.array([0, 0]), np.ones(2, bool), np.array([0.0, 1.0]),
                        np.zeros(2, bool), np.array([np.inf, 5.0]))
    assert m["auroc"] == 1.0


def test_length_mismatch_is_an_error():
    with pytest.raises(BoxhackError, match="differ in length"):
        novelty_metrics(np.zeros(3), np.zeros(2), np.zeros(3, bool))


def test_evaluate_novelty_end_to_end():
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
    ).eval()
    x = rng.normal(size=(300, 4)).astype(np.float32)
    pred, _ = collect(model, ["1"], x)
    y = pred.copy()
    y[:20] = (y[:20] + 1) % 3  # 20 "misclassified" inputs
    monitor = BoxMonitor(n_clusters=2).fit(model, "1", x, y)
    known = rng.normal(size=(200, 4)).astype(np.float32)
    yk, _ = collect(model, ["1"], known)
    yk[:30] = (yk[:30] + 1) % 3
    novel = (rng.normal(size=(150, 4)) * 4).astype(np.float32)
    m = evaluate_novelty(monitor, model, known, yk, novel)
    p, acc = monitor.predict(model, known)
    correct = p == yk
    assert m["n_correct"] == correct.sum() == 170
    assert m["acceptance_rate"] == pytest.approx((acc & correct).sum() / correct.sum())
    assert m["detection_rate"] == pytest.approx((~acc & ~correct).sum() / 30)
    _, nacc = monitor.predict(model, novel)
    assert m["novelty_detection_rate"] == pytest.approx((~nacc).mean())
    assert m["novelty_detection_rate"] > 0.5 and m["auroc"] > 0.7
    # without novel inputs
    m2 = evaluate_novelty(monitor, model, known, yk)
    assert m2["novelty_detection_rate"] is None and m2["acceptance_rate"] == m["acceptance_rate"]
    with pytest.raises(BoxhackError, match="labels"):
        evaluate_novelty(monitor, model, known, yk[:3])
