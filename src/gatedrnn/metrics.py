"""Classification metrics: accuracy, the confusion matrix and macro-averaged F1."""

from __future__ import annotations

import numpy as np


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """``(classes, classes)`` counts; row = true class, column = predicted class."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    return matrix


def accuracy(matrix: np.ndarray) -> float:
    return float(np.trace(matrix) / max(matrix.sum(), 1))


def macro_f1(matrix: np.ndarray) -> float:
    """The unweighted mean over classes of ``F1 = 2 TP / (2 TP + FP + FN)``, over the classes that occur as truth
    or as prediction (a class absent from both has no F1 and is left out of the mean)."""
    tp = np.diag(matrix).astype(np.float64)
    fp = matrix.sum(0) - tp
    fn = matrix.sum(1) - tp
    present = (tp + fp + fn) > 0
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=present)
    return float(f1[present].mean()) if present.any() else 0.0
