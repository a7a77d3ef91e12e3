#!/usr/bin/env python3
"""Reference ROC AUC / partial AUC values from scikit-learn, for the Rust metrics test.

Usage: sklearn_auc.py OUT_JSON [SEED]

Writes random cases (continuous scores, heavily tied scores, unbalanced classes) with scikit-learn's
roc_auc_score(y, s) and roc_auc_score(y, s, max_fpr=0.1).
"""
import json
import sys

import numpy as np
import sklearn
from sklearn.metrics import roc_auc_score


def main():
    out = sys.argv[1]
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(200):
        n = int(rng.integers(4, 400))
        pos_rate = rng.uniform(0.05, 0.95)
        y = rng.random(n) < pos_rate
        if y.all() or not y.any():
            y[0] = not y[0]
        kind = i % 3
        if kind == 0:  # continuous, separated by a random margin
            s = rng.normal(size=n) + y * rng.uniform(-1, 3)
        elif kind == 1:  # many ties
            s = rng.integers(0, 6, size=n).astype(float) + y * rng.integers(0, 3)
        else:  # scores on a tiny scale, like cosine distances
            s = rng.uniform(0, 1e-3, size=n) + y * rng.uniform(0, 5e-4)
        cases.append(
            {
                "labels": [bool(v) for v in y],
                "scores": [float(v) for v in s],
                "auc": float(roc_auc_score(y, s)),
                "pauc": float(roc_auc_score(y, s, max_fpr=0.1)),
            }
        )
    json.dump({"sklearn_version": sklearn.__version__, "cases": cases}, open(out, "w"))


if __name__ == "__main__":
    main()
