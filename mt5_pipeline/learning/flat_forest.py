"""A fitted random forest's trees as flat arrays, walked together for one row.

The live worker predicts one row a bar per symbol. Asking each fitted tree in turn
(:func:`model_store.forest_probability_up`) costs a call into scikit-learn per tree: with
the default 100 trees that was most of a decision's CPU. Here every tree's nodes sit in
one set of arrays, and a row walks all the trees at once, a level per step, in numpy:
the cost grows with the depth, not the number of trees.

**The same numbers, bit for bit.** A split compares the feature as float32 widened to
float64 with the node's float64 threshold, as scikit-learn's tree does; a leaf gives the
class share that ``tree_.predict`` returns, normalised the same way; the trees' shares
are added in tree order (a cumulative sum, not numpy's pairwise sum) and divided by their
count, as :func:`forest_probability_up` does (tested against it and ``predict_proba``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

LEAF = -1  # scikit-learn's child index of a leaf


class FlatForest:
    """The trees of a fitted ``RandomForestClassifier``, for :meth:`probability_up` of one row."""

    def __init__(self, forest: Any) -> None:
        classes = list(forest.classes_)
        self.has_up = 1 in classes
        k = classes.index(1) if self.has_up else 0
        trees = [estimator.tree_ for estimator in forest.estimators_]
        sizes = np.array([t.node_count for t in trees])
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        self.roots = starts
        self.depth = max(int(t.max_depth) for t in trees)
        self.trees = len(trees)
        left, right, feature, threshold, share = [], [], [], [], []
        for start, tree in zip(starts, trees, strict=True):
            own = np.arange(tree.node_count, dtype=np.intp) + start
            leaf = tree.children_left == LEAF
            # A leaf points at itself: once there, further steps stay.
            left.append(np.where(leaf, own, tree.children_left + start))
            right.append(np.where(leaf, own, tree.children_right + start))
            feature.append(np.where(leaf, 0, tree.feature))
            threshold.append(tree.threshold.astype(np.float64))
            values = tree.value.reshape(tree.node_count, -1)[:, : len(classes)]
            norm = values.sum(axis=1)
            norm[norm == 0] = 1.0
            share.append(values[:, k] / norm)
        self.left = np.concatenate(left).astype(np.intp)
        self.right = np.concatenate(right).astype(np.intp)
        self.feature = np.concatenate(feature).astype(np.intp)
        self.threshold = np.concatenate(threshold)
        self.share = np.concatenate(share)

    def probability_up(self, row: np.ndarray) -> float:
        """Probability of class 1 for one row of features (finite values)."""
        if not self.has_up:
            return 0.0
        x = np.ascontiguousarray(row, dtype=np.float32).reshape(-1).astype(np.float64)
        node = self.roots
        for _ in range(self.depth):
            node = np.where(x[self.feature[node]] <= self.threshold[node], self.left[node], self.right[node])
        return float(np.cumsum(self.share[node])[-1] / self.trees)
