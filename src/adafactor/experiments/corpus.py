"""English-Chichewa parallel corpus shipped with the package.

The data are verse-aligned King James Version (English) and Buku Lopatulika
(Chichewa) Bible texts, split by whole chapters into ``train`` (~29k pairs),
``dev`` (~1k) and ``test`` (~1k).  See ``data/README.md`` for provenance,
licences and how the files are regenerated (``scripts/make_corpus.py``).

Each split is stored as ``data/<split>.tsv.xz``: UTF-8, a header line
``ref<TAB>en<TAB>ny``, then one verse per line, e.g.
``GEN.1.1<TAB>In the beginning ...<TAB>Pachiyambi ...``.

Example::

    from adafactor.experiments.corpus import load_pairs
    train = load_pairs("train")  # [(english, chichewa), ...]
"""

from __future__ import annotations

import io
import lzma
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importlib.resources.abc is Python >= 3.11
    from importlib.resources.abc import Traversable

__all__ = ["SPLITS", "load_pairs", "load_records"]

#: Names of the available splits.
SPLITS: tuple[str, ...] = ("train", "dev", "test")

_HEADER = ["ref", "en", "ny"]


def _data_dir() -> Traversable:
    """Return the shipped ``data`` directory, also inside a zipped/installed wheel."""
    if __package__:
        return resources.files(__package__).joinpath("data")
    # Module loaded from its file path rather than as part of a package.
    return Path(__file__).resolve().parent / "data"


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits are: {', '.join(SPLITS)}")
    return split


def load_records(split: str) -> list[tuple[str, str, str]]:
    """Load one split as ``(reference, english, chichewa)`` triples.

    Args:
        split: One of ``"train"``, ``"dev"``, ``"test"``.

    Returns:
        The verse pairs in canonical Bible order; ``reference`` looks like
        ``"GEN.1.1"`` (USFM book code, chapter, verse).

    Raises:
        ValueError: If ``split`` is not a valid split name, or the file is
            malformed.
    """
    path = _data_dir().joinpath(f"{_check_split(split)}.tsv.xz")
    with path.open("rb") as raw, lzma.open(raw, "rb") as xz:
        text = io.TextIOWrapper(xz, encoding="utf-8", newline="\n")
        header = text.readline().rstrip("\n").split("\t")
        if header != _HEADER:
            raise ValueError(f"{split}.tsv.xz: unexpected header {header!r}")
        records: list[tuple[str, str, str]] = []
        for lineno, line in enumerate(text, start=2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 3:
                raise ValueError(f"{split}.tsv.xz:{lineno}: expected 3 fields, got {len(fields)}")
            records.append((fields[0], fields[1], fields[2]))
    return records


def load_pairs(split: str) -> list[tuple[str, str]]:
    """Load one split as ``(english, chichewa)`` sentence pairs.

    Args:
        split: One of ``"train"``, ``"dev"``, ``"test"``.

    Returns:
        The pairs in canonical Bible order.

    Raises:
        ValueError: If ``split`` is not a valid split name.
    """
    return [(en, ny) for _ref, en, ny in load_records(split)]
