"""Hugging Face datasets on disk, read with pyarrow alone (no ``datasets`` import, no network).

``data.root`` is one of:

* a ``Dataset.save_to_disk`` directory: ``state.json`` (its ``_data_files`` name the Arrow IPC
  stream shards ``data-0000i-of-0000n.arrow``) and ``dataset_info.json`` (the features);
* a ``DatasetDict.save_to_disk`` directory: ``dataset_dict.json`` (``{"splits": [...]}``) and one
  such directory per split; the splits are pooled in that order (pflalign makes its own splits);
* a directory of ``.parquet`` files (searched recursively, pooled in path order; the Hub's
  ``data/train-00000-of-00001.parquet`` layout), or one ``.parquet`` file.

Columns: the input (``data.feature_column``, default the first of :data:`FEATURE_COLUMNS`) is an
HF ``Image`` (a struct of encoded ``bytes`` and a ``path``), raw image bytes, or numbers / fixed-
length (nested) lists of numbers; the label (``data.label_column``, default the first of
:data:`LABEL_COLUMNS`) holds integers (a ``ClassLabel``'s names give the class count, else the
largest label + 1) or strings (classes in sorted order). ``data.client_column`` names each row's
natural client (``data.partition=natural``; Flower Datasets' ``partition_by``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError
from . import formats

if TYPE_CHECKING:
    import pyarrow as pa

FEATURE_COLUMNS = ("image", "img", "pixel_values", "x")
LABEL_COLUMNS = ("label", "labels", "fine_label", "y")


def _json(path: Path) -> dict:
    try:
        out = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"cannot read {path}: {type(e).__name__}: {e}") from None
    if not isinstance(out, dict):
        raise DataError(f"{path} is not a JSON object")
    return out


def _arrow(path: Path) -> "pa.Table":
    """An Arrow IPC stream (what ``save_to_disk`` writes) or, failing that, an IPC file."""
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as src:
            try:
                return pa.ipc.open_stream(src).read_all()
            except pa.ArrowInvalid:
                src.seek(0)
                return pa.ipc.open_file(src).read_all()
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"cannot read Arrow file {path}: {type(e).__name__}: {e}") from None


def _parquet(path: Path) -> "pa.Table":
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"cannot read parquet file {path}: {type(e).__name__}: {e}") from None


def _saved(folder: Path) -> tuple[list, dict]:
    """One ``Dataset.save_to_disk`` directory: its shards and its features."""
    state, info = folder / "state.json", folder / "dataset_info.json"
    missing = [p.name for p in (state, info) if not p.is_file()]
    if missing:
        raise DataError(f"{folder} is not a save_to_disk directory: no {' or '.join(missing)}")
    files = _json(state).get("_data_files")
    if not isinstance(files, list) or not files or not all(isinstance(f, dict) and "filename" in f for f in files):
        raise DataError(f"{state} lists no Arrow files (_data_files)")
    return [_arrow(folder / f["filename"]) for f in files], _json(info).get("features") or {}


def _hub_features(table: "pa.Table") -> dict:
    """The features ``datasets`` keeps in a file's schema metadata (parquet from the Hub)."""
    meta = (table.schema.metadata or {}).get(b"huggingface")
    try:
        return json.loads(meta)["info"]["features"] if meta else {}
    except (ValueError, KeyError, TypeError):
        return {}


def read(root: Path) -> tuple[list, dict]:
    """The tables of ``root`` (in pooling order) and the dataset's features (may be empty)."""
    if root.is_file():
        table = _parquet(root)
        return [table], _hub_features(table)
    if (root / "dataset_dict.json").is_file():
        splits = _json(root / "dataset_dict.json").get("splits")
        if not isinstance(splits, list) or not splits:
            raise DataError(f"{root / 'dataset_dict.json'} lists no splits")
        tables, features = [], {}
        for split in splits:
            t, f = _saved(root / str(split))
            tables += t
            features = features or f
        return tables, features
    if (root / "state.json").is_file():
        return _saved(root)
    parquet = [p for p in formats.walk(root) if p.suffix == ".parquet"]
    if not parquet:
        raise DataError(f"data.root={root} holds no Hugging Face dataset: no dataset_dict.json or state.json "
                        f"(save_to_disk) and no .parquet files")
    tables = [_parquet(p) for p in parquet]
    return tables, _hub_features(tables[0])


def _column(names: list[str], key: str, given: str | None, defaults: tuple[str, ...], root: Path) -> str:
    if given is not None:
        if given not in names:
            raise DataError(f"data.{key}={given} is not a column of data.root={root} (columns: {', '.join(names)})")
        return given
    found = next((c for c in defaults if c in names), None)
    if found is None:
        raise DataError(f"data.root={root} has none of the columns {', '.join(defaults)} (columns: "
                        f"{', '.join(names)}): set data.{key}")
    return found


def _inputs(col: "pa.ChunkedArray", name: str, cfg, root: Path) -> np.ndarray:
    import pyarrow as pa

    t, where = col.type, f"column {name} of data.root={root}"
    if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:  # datasets.Image
        arr = col.combine_chunks()
        paths = arr.field("path").to_pylist() if t.get_field_index("path") >= 0 else [None] * len(arr)
        sources: list[Any] = arr.field("bytes").to_pylist()
        for i, (b, p) in enumerate(zip(sources, paths)):
            if b is None:
                if p is None or not Path(p).is_file():
                    raise DataError(f"row {i} of {where}: the image is not embedded and its path {p} is not a file")
                sources[i] = p
        return formats.decode_images(sources, lambda i: f"row {i} of {where}", cfg.image_size, cfg.image_mode)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return formats.decode_images(col.to_pylist(), lambda i: f"row {i} of {where}", cfg.image_size,
                                     cfg.image_mode)
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_nested(t) and not pa.types.is_struct(t):
        try:
            x = np.asarray(col.to_pylist(), dtype=np.float32)
        except (ValueError, TypeError):
            raise DataError(f"{where}: rows are lists of different lengths (or not numbers)") from None
        if not np.isfinite(x).all():
            raise DataError(f"{where} holds NaN or infinite values")
        return x.reshape(len(x), -1) if x.ndim == 1 else x
    raise DataError(f"{where} holds {t}: dataset hf reads images (HF Image or bytes) or numbers and "
                    f"fixed-length lists of numbers (tokenize text into such a column first)")


def _labels(col: "pa.ChunkedArray", name: str, feature: Any, root: Path) -> tuple[np.ndarray, int]:
    import pyarrow as pa

    where = f"column {name} of data.root={root}"
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        classes, y = np.unique(np.asarray(col.to_pylist(), dtype=str), return_inverse=True)
        return y.ravel().astype(np.int64), len(classes)
    y = formats.labels(col.to_numpy(), where)
    if len(y) and y.min() < 0:
        raise DataError(f"{where} holds label {int(y.min())} (unlabeled rows, as in some Hub test splits): "
                        f"remove them")
    names = feature.get("names") if isinstance(feature, dict) else None
    return y, len(names) if isinstance(names, list) else int(y.max()) + 1


def load(cfg):
    """-> x, y, num_classes, input_shape, natural clients (or None), their names."""
    import pyarrow as pa

    root = formats.require_root(cfg, "hf", (".parquet",))
    tables, features = read(root)
    names = tables[0].column_names
    feat = _column(names, "feature_column", cfg.feature_column, FEATURE_COLUMNS, root)
    label = _column(names, "label_column", cfg.label_column, LABEL_COLUMNS, root)
    client = None if cfg.client_column is None else _column(names, "client_column", cfg.client_column, (), root)
    if cfg.partition == "natural" and client is None:
        raise DataError(f"data.partition=natural with dataset hf needs data.client_column (columns: {', '.join(names)})")
    cols = list(dict.fromkeys(c for c in (feat, label, client) if c is not None))
    try:
        table = pa.concat_tables([t.select(cols) for t in tables])
    except (KeyError, pa.ArrowException) as e:
        raise DataError(f"the splits/files of data.root={root} differ in columns {', '.join(cols)}: {e}") from None
    if table.num_rows == 0:
        raise DataError(f"data.root={root} holds no rows")
    for c in cols:
        if table[c].null_count:
            raise DataError(f"column {c} of data.root={root} has {table[c].null_count} missing values")
    y, num_classes = _labels(table[label], label, features.get(label), root)
    x = _inputs(table[feat], feat, cfg, root)
    clients, client_names = None, None
    if cfg.partition == "natural":
        clients, client_names = formats.natural(np.asarray(table[client].to_pylist()), cfg.num_clients,
                                                f"column {client} of data.root={root}")
    return x, y, num_classes, tuple(int(d) for d in x.shape[1:]), clients, client_names
