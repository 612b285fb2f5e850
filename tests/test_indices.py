"""Tests for ats.indices: the paper's fixed index sets, per-class and balanced subsets, index lists."""
from __future__ import annotations

import pytest
import torch

from ats import data, indices
from ats.runtime import make_generator


# --- index sets ------------------------------------------------------------------------------

def test_fixed_index_sets():
    assert indices.ATTACK_SET == tuple(range(100))
    assert len(indices.PRIVACY_SET) == 100 and indices.PRIVACY_SET[:3] == (200, 205, 210)
    assert indices.PRIVACY_SET[-1] == 695 and not set(indices.PRIVACY_SET) & set(indices.ATTACK_SET)
    windows = indices.accuracy_windows()
    assert len(windows) == 10 and all(len(w) == 100 for w in windows)
    assert windows[0] == tuple(range(200, 300)) and windows[-1][-1] == 1199
    assert indices.accuracy_windows(runs=2, size=3) == ((200, 201, 202), (203, 204, 205))
    with pytest.raises(ValueError, match="runs=0"):
        indices.accuracy_windows(runs=0)


def test_dedupe_by_label_keeps_first_of_each_label():
    labels = [7, 3, 7, 1, 3, 9]
    assert indices.dedupe_by_label(range(6), labels) == (0, 1, 3, 5)
    assert indices.dedupe_by_label([2, 4, 0], torch.tensor(labels)) == (2, 4)
    with pytest.raises(ValueError, match="index 6"):
        indices.dedupe_by_label([6], labels)


def test_accuracy_window_dedupe_on_cifar100(cifar_dir):
    labels = data.load_dataset("cifar100", "test", root=cifar_dir).labels
    kept = indices.dedupe_by_label(indices.accuracy_windows()[0], labels)
    kept_labels = labels[list(kept)].tolist()
    assert 50 <= len(kept) <= 75 and len(set(kept_labels)) == len(kept)
    assert set(kept_labels) == set(labels[200:300].tolist())


def test_per_class_indices_takes_first_k_in_dataset_order():
    labels = [1, 0, 1, 2, 0, 1, 2, 0, 2]
    assert indices.per_class_indices(labels, 2) == (1, 4, 0, 2, 3, 6)
    assert indices.per_class_indices(labels, 1, num_classes=3) == (1, 0, 3)
    with pytest.raises(ValueError, match="k=4"):
        indices.per_class_indices(labels, 4)


def test_class_balanced_subset_is_seeded_and_balanced(device):
    labels = torch.arange(10).repeat_interleave(100)[torch.randperm(1000, generator=make_generator(0))]
    subset = indices.class_balanced_subset(labels, 0.1, make_generator(1, device))
    assert len(subset) == 100 and list(subset) == sorted(set(subset))
    assert torch.bincount(labels[list(subset)], minlength=10).tolist() == [10] * 10
    assert subset == indices.class_balanced_subset(labels, 0.1, make_generator(1, device))
    assert subset != indices.class_balanced_subset(labels, 0.1, make_generator(2, device))
    with pytest.raises(ValueError, match="fraction 0"):
        indices.class_balanced_subset(labels, 0, make_generator(1))


@pytest.mark.parametrize("text, expected", [("0-4", (0, 1, 2, 3, 4)), ("0,3,7", (0, 3, 7)),
                                            ("0-4,9", (0, 1, 2, 3, 4, 9)), (" 12 ", (12,))])
def test_parse_indices(text, expected):
    assert indices.parse_indices(text) == expected


@pytest.mark.parametrize("text, problem", [("", "not a number"), ("a", "not a number"),
                                           ("4-0", "backwards"), ("1,,2", "not a number"),
                                           ("-1", "not a number"), ("0-3,2", "more than once")])
def test_parse_indices_rejects_malformed_input(text, problem):
    with pytest.raises(ValueError, match=problem):
        indices.parse_indices(text)


@pytest.mark.parametrize("text, problem", [("0-999999", "more than 100,000"), ("0-99999,100000-100001", "more than"),
                                           ("٧", "not a number"), ("1" * 5000, "not a number")])
def test_parse_indices_refuses_huge_and_non_ascii_lists_at_once(text, problem):
    with pytest.raises(ValueError, match=problem):
        indices.parse_indices(text)


def test_parse_indices_checks_repeats_in_linear_time():
    assert len(indices.parse_indices("0-49999")) == 50_000  # quadratic counting took minutes here
