"""LEAF-style Shakespeare: next-character prediction, one client per speaking role.

The text is a play file in the Tiny Shakespeare format: a speaker line ``NAME:`` followed by the
speech's lines, a blank line between speeches. A block whose first line is not a speaker line
continues the previous speaker's speech (text before the first speaker is ignored; speaker
lines with no speech are skipped). A speaker's text is its speeches joined by newlines.

Clients are the speakers with at least ``min_chars`` characters (and at least two windows),
ranked by text length (ties: by name); the ``num_clients`` longest are kept, largest first.
A sample is a window of ``seq_len`` characters -> the character that follows it; windows start
every ``stride`` characters (null: ``seq_len``, disjoint windows; LEAF uses 1). A client with
more than ``client_samples`` windows keeps a seeded random subset of them (null: all).

The vocabulary is fixed (LEAF's 80 characters, the same indices), plus one index for any other
character, so the class count never depends on the text.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import DataError

# LEAF's ALL_LETTERS (models/utils/language_utils.py): index = position in this string.
LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
UNK = len(LETTERS)            # every other character
VOCAB_SIZE = len(LETTERS) + 1  # 81 classes
FILE_NAMES = ("tinyshakespeare.txt", "input.txt")

_SPEAKER = re.compile(r"[A-Z][A-Za-z0-9 '.,&-]{0,49}:")
_LUT = np.full(128, UNK, dtype=np.int64)
_LUT[[ord(c) for c in LETTERS]] = np.arange(len(LETTERS))


def encode(text: str) -> np.ndarray:
    """int64 token ids of ``text`` (non-LEAF characters -> ``UNK``)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    out = np.full(len(codes), UNK, dtype=np.int64)
    ascii_ = codes < 128
    out[ascii_] = _LUT[codes[ascii_]]
    return out


def decode(ids) -> str:
    """Inverse of :func:`encode` (``UNK`` -> ``"\\ufffd"``)."""
    return "".join(LETTERS[i] if 0 <= i < UNK else "\ufffd" for i in np.asarray(ids).tolist())


def find_file(root: Optional[str]) -> Path:
    if root is None:
        raise DataError("dataset shakespeare reads a play file: set data.root to it (or to a "
                        f"directory holding {' or '.join(FILE_NAMES)})")
    path = Path(root).expanduser()
    if path.is_dir():
        for name in FILE_NAMES:
            if (path / name).is_file():
                return path / name
        raise DataError(f"no {' or '.join(FILE_NAMES)} found in data.root={path} "
                        f"(dataset shakespeare)")
    if not path.is_file():
        raise DataError(f"data.root={path} not found (dataset shakespeare: a play file or a "
                        f"directory holding {' or '.join(FILE_NAMES)})")
    return path


def speeches(text: str) -> dict[str, list[str]]:
    """speaker -> speeches, in order of first appearance."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    out: dict[str, list[str]] = {}
    speaker = None
    for block in re.split(r"\n[ \t]*\n", text):
        lines = block.strip("\n").split("\n")
        if _SPEAKER.fullmatch(lines[0].strip()):
            speaker, lines = lines[0].strip()[:-1].strip(), lines[1:]
        speech = "\n".join(lines).strip("\n")
        if speaker is not None and speech.strip():
            out.setdefault(speaker, []).append(speech)
    return out


def windows(length: int, seq_len: int, stride: int) -> np.ndarray:
    """Start positions of every full window (of a text of ``length``) that has a next character."""
    return np.arange(0, max(length - seq_len, 0), stride, dtype=np.int64)


def load(path: Path, num_clients: int, seq_len: int, stride: Optional[int], min_chars: int,
         client_samples: Optional[int], seed: int):
    """-> x int64 [N, seq_len], y int64 [N], per-client index arrays, speaker names."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise DataError(f"cannot read data.root={path} (dataset shakespeare): {e}") from None
    stride = int(stride or seq_len)
    by_speaker = {name: "\n".join(parts) for name, parts in speeches(text).items()}
    eligible = [(name, t) for name, t in by_speaker.items()
                if len(t) >= min_chars and len(windows(len(t), seq_len, stride)) >= 2]
    if num_clients > len(eligible):
        raise DataError(f"data.num_clients={num_clients} but only {len(eligible)} of the "
                        f"{len(by_speaker)} speakers in {path} qualify (>= data.min_chars="
                        f"{min_chars} characters and 2 windows of data.seq_len={seq_len}): "
                        f"lower data.num_clients or data.min_chars")
    eligible.sort(key=lambda nt: (-len(nt[1]), nt[0]))
    xs, ys, clients, names, start = [], [], [], [], 0
    for rank, (name, t) in enumerate(eligible[:num_clients]):
        ids = encode(t)
        starts = windows(len(ids), seq_len, stride)
        if client_samples is not None and len(starts) > client_samples:
            rng = np.random.default_rng([seed % 2**64, 0x5A4B, rank])
            starts = np.sort(rng.choice(starts, client_samples, replace=False))
        xs.append(ids[starts[:, None] + np.arange(seq_len)])
        ys.append(ids[starts + seq_len])
        clients.append(np.arange(start, start + len(starts), dtype=np.int64))
        names.append(name)
        start += len(starts)
    return np.concatenate(xs), np.concatenate(ys), clients, names
