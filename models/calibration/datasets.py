"""The labelled image sets `calibrate` reads: a folder in the LFW layout, or a pairs file.

* **A folder in the LFW layout**, ``<root>/<person>/<image>`` (`list_folder`): every regular,
  non-hidden file below a person folder is one capture of that person (files in nested
  folders count for the person folder they sit in; files directly under ``<root>`` are
  listed as ignored). Genuine pairs are all pairs of two different captures of one person,
  impostor pairs all pairs of captures of two different persons.
* **A pairs file** (`parse_pairs`), with image paths relative to an image root:

  - LFW ``pairs.txt`` style, whitespace separated: ``name n1 n2`` is a genuine pair of
    ``name/name_<n1:04d>.jpg`` and ``name/name_<n2:04d>.jpg``; ``name1 n1 name2 n2`` an
    impostor pair. A first line of one or two integers (LFW's fold header) is skipped.
  - CSV, ``path_a,path_b,same`` with ``same`` 1 (genuine) or 0 (impostor); a first line
    whose third field is not 0/1 is a header and is skipped.

  Blank lines and lines starting with ``#`` are ignored in both.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path


class CalibrationInputError(ValueError):
    """The folder or pairs file cannot be used (wrong layout, malformed line)."""

    code = "invalid_calibration_input"


# --- labelled folders -----------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledFolder:
    """A folder's captures in a stable sorted order: ``persons[i]`` is who ``paths[i]`` shows.

    ``ignored`` are the names of files directly under the root, which belong to no person.
    """

    paths: list[Path]
    persons: list[str]
    ignored: list[str]


def list_folder(root: Path) -> LabelledFolder:
    """Every capture below ``root/<person>/``; hidden files and folders are skipped."""
    paths: list[Path] = []
    persons: list[str] = []
    ignored: list[str] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            for dirpath, dirnames, filenames in os.walk(entry):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if not name.startswith("."):
                        paths.append(Path(dirpath) / name)
                        persons.append(entry.name)
        else:
            ignored.append(entry.name)
    return LabelledFolder(paths, persons, ignored)


# --- pairs files ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PairSpec:
    """One listed comparison; paths are relative to the image root (or absolute)."""

    path_a: str
    path_b: str
    genuine: bool
    line: int


def read_pairs(path: Path) -> list[PairSpec]:
    return parse_pairs(path.read_text(encoding="utf-8-sig"), source=str(path))


def parse_pairs(text: str, source: str = "<pairs>") -> list[PairSpec]:
    """Parse an LFW ``pairs.txt``-style or ``path_a,path_b,same`` CSV pairs list.

    The format is decided by the first content line: a comma makes it CSV.
    """
    lines = [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise CalibrationInputError(f"{source}: no pairs")
    if "," in lines[0][1]:
        pairs = _parse_csv_pairs(lines, source)
    else:
        pairs = _parse_lfw_pairs(lines, source)
    if not pairs:
        raise CalibrationInputError(f"{source}: no pairs")
    return pairs


def _parse_csv_pairs(lines: list[tuple[int, str]], source: str) -> list[PairSpec]:
    pairs: list[PairSpec] = []
    for position, (number, line) in enumerate(lines):
        fields = [f.strip() for f in next(csv.reader([line]))]
        if len(fields) != 3:
            raise CalibrationInputError(
                f"{source}:{number}: expected path_a,path_b,same; got {len(fields)} fields"
            )
        path_a, path_b, same = fields
        if same not in ("0", "1"):
            if position == 0:
                continue  # a header row
            raise CalibrationInputError(f"{source}:{number}: 'same' must be 0 or 1, not {same!r}")
        if not path_a or not path_b:
            raise CalibrationInputError(f"{source}:{number}: empty image path")
        pairs.append(PairSpec(path_a, path_b, same == "1", number))
    return pairs


def _lfw_image(name: str, number: str, source: str, line: int) -> str:
    if not number.isdigit() or int(number) < 1:
        raise CalibrationInputError(f"{source}:{line}: image number {number!r} is not positive")
    return f"{name}/{name}_{int(number):04d}.jpg"


def _parse_lfw_pairs(lines: list[tuple[int, str]], source: str) -> list[PairSpec]:
    pairs: list[PairSpec] = []
    for position, (number, line) in enumerate(lines):
        tokens = line.split()
        if position == 0 and len(tokens) <= 2 and all(t.isdigit() for t in tokens):
            continue  # LFW's "<folds>\t<pairs per fold>" header
        if len(tokens) == 3:
            name, n1, n2 = tokens
            a = _lfw_image(name, n1, source, number)
            b = _lfw_image(name, n2, source, number)
            pairs.append(PairSpec(a, b, True, number))
        elif len(tokens) == 4:
            name1, n1, name2, n2 = tokens
            a = _lfw_image(name1, n1, source, number)
            b = _lfw_image(name2, n2, source, number)
            pairs.append(PairSpec(a, b, False, number))
        else:
            raise CalibrationInputError(
                f"{source}:{number}: expected 'name n1 n2' or 'name1 n1 name2 n2'; "
                f"got {len(tokens)} fields"
            )
    return pairs
