"""Re-fitting a network's last linear layer on the features its quantized backbone really produces.

The int8 backbone's features differ from the fp32 ones in a consistent way; a ridge least-squares fit of the
last layer on the calibration crops (pulled toward the trained weights, strength chosen by 5-fold
cross-validation) absorbs that. Format-neutral numpy.
"""

from __future__ import annotations

import numpy as np

RIDGE_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)


def choose_ridge(features: np.ndarray, target: np.ndarray, weight: np.ndarray, bias: np.ndarray, folds: int = 5) -> float | None:
    """Ridge strength with the lowest 5-fold (index % 5) squared error on the calibration features; None when
    no refit beats the trained layer on the held-out folds (e.g. too few crops for a wide FC)."""
    fold = np.arange(len(features)) % folds
    kept = float(((features.astype(np.float64) @ weight.T.astype(np.float64) + bias - target) ** 2).sum())
    errors = []
    for ridge in RIDGE_GRID:
        err = 0.0
        for k in range(folds):
            w, b = refit_linear(features[fold != k], target[fold != k], weight, bias, ridge)
            err += float(((features[fold == k] @ w.T.astype(np.float64) + b - target[fold == k]) ** 2).sum())
        errors.append(err)
    best = int(np.argmin(errors))
    return RIDGE_GRID[best] if errors[best] < kept else None


def refit_linear(features: np.ndarray, target: np.ndarray, weight: np.ndarray, bias: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Least squares ``features @ W.T + b ~ target``, pulled toward the original (W, b) by ``ridge`` (bias free).

    The int8 backbone's features differ from fp32 ones in a consistent way; re-fitting the last layer on the
    calibration crops absorbs that (bias correction is the ridge -> infinity limit).
    """
    f = features.astype(np.float64)
    n = len(f)
    x = np.hstack([f, np.ones((n, 1))])
    prior = np.hstack([weight, bias[:, None]]).astype(np.float64)
    penalty = np.full(x.shape[1], ridge * n)
    penalty[-1] = 0.0
    # Shift the bias of the prior so the unpenalized intercept fits the mean residual.
    lhs = x.T @ x + np.diag(penalty)
    rhs = x.T @ target.astype(np.float64) + penalty[:, None] * prior.T
    solution = np.linalg.solve(lhs, rhs).T
    return solution[:, :-1].astype(np.float32), solution[:, -1].astype(np.float32)
