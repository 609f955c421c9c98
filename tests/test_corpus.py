"""Tests for the shipped English-Chichewa corpus and its loader."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

try:
    from adafactor.experiments import corpus
except ImportError:  # package not installed: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from adafactor.experiments import corpus

EXPECTED_SIZES = {"train": (28_000, 30_000), "dev": (900, 1_100), "test": (900, 1_100)}


@pytest.fixture(scope="module")
def records() -> dict[str, list[tuple[str, str, str]]]:
    return {split: corpus.load_records(split) for split in corpus.SPLITS}


def test_splits_constant() -> None:
    assert corpus.SPLITS == ("train", "dev", "test")


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_split_sizes(records: dict[str, list[tuple[str, str, str]]], split: str) -> None:
    lo, hi = EXPECTED_SIZES[split]
    assert lo <= len(records[split]) <= hi


def test_total_size(records: dict[str, list[tuple[str, str, str]]]) -> None:
    assert 30_500 <= sum(len(r) for r in records.values()) <= 31_200


def test_references_unique_and_disjoint(records: dict[str, list[tuple[str, str, str]]]) -> None:
    seen: dict[str, str] = {}
    for split, rows in records.items():
        for ref, _en, _ny in rows:
            assert ref not in seen, f"{ref} in both {seen[ref]} and {split}"
            seen[ref] = split


def test_split_by_whole_chapters(records: dict[str, list[tuple[str, str, str]]]) -> None:
    owner: dict[str, str] = {}
    for split, rows in records.items():
        for ref, _en, _ny in rows:
            chapter = ref.rsplit(".", 1)[0]
            assert owner.setdefault(chapter, split) == split, f"chapter {chapter} spans splits"


def test_no_empty_or_unnormalised_sides(records: dict[str, list[tuple[str, str, str]]]) -> None:
    for rows in records.values():
        for ref, en, ny in rows:
            for text in (en, ny):
                assert text.strip(), ref
                assert text == " ".join(text.split()), ref  # no tabs/newlines/double spaces


def test_known_verses(records: dict[str, list[tuple[str, str, str]]]) -> None:
    by_ref = {ref: (en, ny) for rows in records.values() for ref, en, ny in rows}
    en, ny = by_ref["GEN.1.1"]
    assert en == "In the beginning God created the heaven and the earth."
    assert ny.strip()
    assert by_ref["JHN.3.16"][0].startswith("For God so loved the world")
    assert by_ref["REV.22.21"][0] == "The grace of our Lord Jesus Christ be with you all. Amen."
    assert by_ref["PSA.23.1"][0] == "The LORD is my shepherd; I shall not want."


def test_load_pairs_matches_records(records: dict[str, list[tuple[str, str, str]]]) -> None:
    pairs = corpus.load_pairs("dev")
    assert pairs == [(en, ny) for _ref, en, ny in records["dev"]]
    assert all(isinstance(p, tuple) and len(p) == 2 for p in pairs)


@pytest.mark.parametrize("bad", ["valid", "Train", "", "training"])
def test_bad_split_name(bad: str) -> None:
    with pytest.raises(ValueError, match="train, dev, test"):
        corpus.load_pairs(bad)
