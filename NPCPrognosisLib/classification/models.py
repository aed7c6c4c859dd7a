"""Classifiers for binary endpoints (e.g. induction-chemotherapy response), fitted by scikit-learn, stored as JSON.

The studies this product follows compare several classifier families (logistic regression, SVM, random forest,
gradient boosting, k-NN) on radiomics and clinical factors. A bundle must never hold a pickle (loading one runs
arbitrary code), and skops, the safer scikit-learn format, still needs a list of trusted types reviewed at load
time and ties a bundle to the scikit-learn version that wrote it. Each family here is instead written as the
numbers that define its prediction (coefficients; support vectors and Platt constants; every tree's split
arrays; the stored neighbours) and predicted by a few lines of numpy, so a bundle reads like the rest of the
bundle JSON and predicts the same under any scikit-learn. Tests check each family's JSON prediction against
scikit-learn's own ``predict_proba``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from NPCPrognosisLib.errors import InputError

FAMILIES = ("logistic", "svm", "random_forest", "gradient_boosting", "knn")
FORMAT_VERSION = 1


def make_estimator(family: str, seed: int = 0, calibration_folds: int = 5):
    """The scikit-learn estimator of one family, at settings small enough for 2 CPU cores and 160 patients."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC

    if family == "logistic":
        return LogisticRegression(C=1.0, max_iter=2000)
    if family == "svm":  # Platt scaling fitted on cross-validated decision values, one SVC on all data
        return CalibratedClassifierCV(SVC(C=1.0, gamma="scale"), method="sigmoid", ensemble=False,
                                      cv=calibration_folds)
    if family == "random_forest":
        return RandomForestClassifier(n_estimators=200, min_samples_leaf=5, max_features="sqrt", random_state=seed,
                                      n_jobs=1)
    if family == "gradient_boosting":
        return GradientBoostingClassifier(n_estimators=100, max_depth=2, learning_rate=0.05, subsample=0.8,
                                          random_state=seed)
    if family == "knn":
        return KNeighborsClassifier(n_neighbors=15)  # fit_classifier caps k at the training size
    raise InputError(f"unknown classifier family {family!r}", fix=f"use one of {FAMILIES}")


def _scaler(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    return mean, np.where(scale > 0, scale, 1.0)


def fit_classifier(family: str, X: Any, y: Any, columns: list[str], seed: int = 0) -> dict[str, Any]:
    """Standardise, fit one family and return its JSON form (see :func:`predict_proba`).

    Parameters
    ----------
    family : str
        One of :data:`FAMILIES`.
    X : array-like, shape (n_patients, n_columns)
        Inputs (no missing values).
    y : array-like of 0/1
        The binary endpoint.
    columns : list of str
        Names of the columns of ``X``; prediction picks them by name.

    Returns
    -------
    model : dict
        JSON-able; ``predict_proba(model, X)`` reproduces scikit-learn's probability of class 1.
    """
    X = np.asarray(X, float)
    y = np.asarray(y, int)
    if set(np.unique(y).tolist()) != {0, 1}:
        raise InputError("a binary endpoint needs both outcomes (0 and 1) among the training patients",
                         fix="check the column's coding (1 = event/response, 0 = none)")
    mean, scale = _scaler(X)
    Z = (X - mean) / scale
    minority = int(min(y.sum(), len(y) - y.sum()))
    est = make_estimator(family, seed, calibration_folds=max(2, min(5, minority)))
    if family == "knn":
        est.set_params(n_neighbors=min(est.n_neighbors, len(y)))
    est.fit(Z, y)
    model: dict[str, Any] = {"kind": "binary_classifier", "format_version": FORMAT_VERSION, "family": family,
                             "columns": list(columns), "mean": mean.tolist(), "scale": scale.tolist()}
    if family == "logistic":
        model.update(coef=est.coef_[0].tolist(), intercept=float(est.intercept_[0]))
    elif family == "svm":
        calibrated = est.calibrated_classifiers_[0]
        svc, sigmoid = calibrated.estimator, calibrated.calibrators[0]
        model.update(support_vectors=svc.support_vectors_.tolist(), dual_coef=svc.dual_coef_[0].tolist(),
                     intercept=float(svc.intercept_[0]), gamma=float(svc._gamma), platt_a=float(sigmoid.a_),
                     platt_b=float(sigmoid.b_))
    elif family == "random_forest":
        model["trees"] = [_tree_dict(t.tree_, classifier=True) for t in est.estimators_]
    elif family == "gradient_boosting":
        prior = float(np.clip(y.mean(), 1e-9, 1 - 1e-9))
        model.update(init_log_odds=float(np.log(prior / (1 - prior))), learning_rate=float(est.learning_rate),
                     trees=[_tree_dict(t.tree_, classifier=False) for t in est.estimators_[:, 0]])
    elif family == "knn":
        model.update(k=int(est.n_neighbors), train_x=Z.tolist(), train_y=y.tolist())
    return model


def _tree_dict(tree, classifier: bool) -> dict[str, list]:
    if classifier:
        value = tree.value[:, 0, :]
        leaf = (value[:, 1] / value.sum(axis=1)).tolist()
    else:
        leaf = tree.value[:, 0, 0].tolist()
    return {"left": tree.children_left.tolist(), "right": tree.children_right.tolist(),
            "feature": tree.feature.tolist(), "threshold": tree.threshold.tolist(), "value": leaf}


def _tree_predict(tree: Mapping[str, list], Z: np.ndarray) -> np.ndarray:
    left, right = np.asarray(tree["left"]), np.asarray(tree["right"])
    feature, threshold = np.asarray(tree["feature"]), np.asarray(tree["threshold"])
    node = np.zeros(len(Z), dtype=int)
    rows = np.arange(len(Z))
    while True:
        inner = left[node] >= 0
        if not inner.any():
            break
        n = node[inner]
        go_left = Z[rows[inner], feature[n]] <= threshold[n]
        node[inner] = np.where(go_left, left[n], right[n])
    return np.asarray(tree["value"])[node]


def predict_proba(model: Mapping[str, Any], X: Any) -> np.ndarray:
    """Probability of class 1 for each row of ``X`` (columns in ``model['columns']`` order)."""
    if model.get("kind") != "binary_classifier":
        raise InputError("not a binary classifier dict", fix="pass a model written by fit_classifier")
    Z = (np.asarray(X, float) - np.asarray(model["mean"])) / np.asarray(model["scale"])
    family = model["family"]
    if family == "logistic":
        return _expit(Z @ np.asarray(model["coef"]) + model["intercept"])
    if family == "svm":
        sv = np.asarray(model["support_vectors"])
        d2 = (Z ** 2).sum(1)[:, None] + (sv ** 2).sum(1)[None, :] - 2.0 * Z @ sv.T
        decision = np.exp(-model["gamma"] * np.maximum(d2, 0.0)) @ np.asarray(model["dual_coef"]) + model["intercept"]
        return 1.0 / (1.0 + np.exp(model["platt_a"] * decision + model["platt_b"]))
    if family == "random_forest":
        return np.mean([_tree_predict(t, Z) for t in model["trees"]], axis=0)
    if family == "gradient_boosting":
        raw = model["init_log_odds"] + model["learning_rate"] * np.sum([_tree_predict(t, Z) for t in model["trees"]],
                                                                        axis=0)
        return _expit(raw)
    if family == "knn":
        train = np.asarray(model["train_x"])
        d2 = (Z ** 2).sum(1)[:, None] + (train ** 2).sum(1)[None, :] - 2.0 * Z @ train.T
        nearest = np.argsort(d2, axis=1, kind="stable")[:, : model["k"]]
        return np.asarray(model["train_y"], float)[nearest].mean(axis=1)
    raise InputError(f"unknown classifier family {family!r}", fix="update NPCPrognosis")


def _expit(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, float)))
