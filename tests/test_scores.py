"""The shared arithmetic on model outputs (wildvision.scores): written once, used by predict,
train, quantize, bench and the open-set gate."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import wildvision
from wildvision.scores import group_matrix, log_softmax, softmax, unit_rows


def test_group_matrix_sums_groups_and_maps_labels() -> None:
    labels = ["a1", "b1", "a2", "c1"]
    lg = {"a1": "A", "a2": "A", "b1": "B", "c1": "C"}
    m = group_matrix(labels, lg)  # first-appearance order: A, B, C
    assert m.shape == (4, 3) and m.dtype == np.float64
    assert m.argmax(axis=1).tolist() == [0, 1, 0, 2]
    probs = np.array([[0.1, 0.2, 0.3, 0.4]])
    np.testing.assert_allclose(probs @ m, [[0.4, 0.2, 0.4]])
    m2 = group_matrix(labels, lg, ["C", "B", "A", "D"])  # explicit order, an empty group
    np.testing.assert_allclose(probs @ m2, [[0.4, 0.2, 0.4, 0.0]])
    with pytest.raises(KeyError):
        group_matrix(labels, lg, ["A", "B"])


def test_softmax_and_unit_rows() -> None:
    z = np.array([[1000.0, 1001.0, 999.0], [0.0, 0.0, 0.0]])
    p = softmax(z, temperature=2.0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(np.log(p), log_softmax(z, 2.0))
    np.testing.assert_allclose(p[1], 1 / 3)
    u = unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert u.dtype == np.float32
    np.testing.assert_allclose(u, [[0.6, 0.8], [0.0, 0.0]])
    assert unit_rows(np.array([3.0, 4.0])).shape == (1, 2)


def test_no_other_module_builds_the_group_matrix_or_a_softmax() -> None:
    """The label -> group matrix and the softmax exist once (wildvision/scores.py): no other
    module defines a softmax or fills a matrix from ``label_groups`` in a loop."""
    root = Path(wildvision.__file__).parent
    offenders = []
    for f in sorted(root.rglob("*.py")):
        if f.name == "scores.py":
            continue
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name in (
                    "softmax", "log_softmax", "_unit", "group_matrix"):
                offenders.append(f"{f.relative_to(root)}: def {node.name}")
            if isinstance(node, ast.For):
                body = ast.unparse(node)
                if "label_groups[" in body and "= 1.0" in body:
                    offenders.append(f"{f.relative_to(root)}:{node.lineno}: group matrix loop")
    assert not offenders, offenders
