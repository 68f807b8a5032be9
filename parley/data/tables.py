"""Rows of tabular sources as (line, dict) pairs, streamed: CSV, Parquet, and Hugging Face datasets.

    csv_rows(path)        the header names the keys; the number given is the row's first line in the file
    parquet_rows(path)    read a batch at a time; the number given is the row's position (1-based)
    hub_rows(name, ...)   `datasets.load_dataset(..., streaming=True)`: the Hub, or a local dataset directory

What a row means (a prompt/response pair, a `messages` list, a Stack file, ...) is decided from its
keys by `sources.py`, the same way as for JSON lines.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from parley.data.textfiles import lines
from parley.errors import DataError

BATCH_ROWS = 1024


def csv_rows(path: Path) -> Iterator[tuple[int, dict]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long code cells are normal here
    numbered = lines(path)
    line_of_last_read = [0]

    def text():
        for number, line in numbered:
            line_of_last_read[0] = number
            yield line

    delimiter = "\t" if Path(path).suffix.lower() == ".tsv" else ","
    reader = csv.reader(text(), delimiter=delimiter)
    header = next(reader, None)
    if not header:
        raise DataError(f"{path}: empty file; a CSV source needs a header row naming its columns")
    start = line_of_last_read[0] + 1
    try:
        for row in reader:
            if row:
                yield start, dict(zip(header, row))
            start = line_of_last_read[0] + 1
    except csv.Error as e:
        raise DataError(f"{path}:{line_of_last_read[0]}: not valid CSV ({e})") from None


def csv_header(path: Path) -> list[str]:
    delimiter = "\t" if Path(path).suffix.lower() == ".tsv" else ","
    for _, line in lines(path):
        return next(csv.reader([line], delimiter=delimiter), [])
    return []


def parquet_rows(path: Path) -> Iterator[tuple[int, dict]]:
    row = 0
    for batch in _parquet(path).iter_batches(batch_size=BATCH_ROWS):
        for item in batch.to_pylist():
            row += 1
            yield row, item


def parquet_columns(path: Path) -> list[str]:
    return list(_parquet(path).schema_arrow.names)


def _parquet(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None


def hub_rows(name: str, config: str | None = None, split: str = "train") -> Iterator[tuple[int, dict]]:
    """Rows of a Hugging Face dataset, streamed (`load_dataset(..., streaming=True)`): a Hub id (its files
    read as they download, none kept whole), a local dataset directory (its files read in place, with no
    Arrow copy made in the cache first), or a `save_to_disk` directory (memory-mapped). Offline, a Hub id
    is read from the cache of an earlier download instead, which streaming cannot use."""
    import datasets

    datasets.disable_progress_bars()
    local = Path(name).expanduser().exists()
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        if (Path(name) / "dataset_info.json").is_file() or _is_saved_dict(name):  # a save_to_disk directory
            loaded = datasets.load_from_disk(name)
            dataset = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        else:
            dataset = datasets.load_dataset(name, config, split=split, streaming=local or not offline)
    except KeyError:
        raise DataError(f"hf:{name}: no split {split!r}; pick one with hf:{name},split=NAME") from None
    except Exception as e:  # datasets raises many unrelated types for "cannot get it"; all mean the same here
        hint = "it is not in the local cache and HF_HUB_OFFLINE is set" if offline and not local else _first_line(e)
        raise DataError(
            f"hf:{name}: cannot load the dataset ({hint}); check the name and network, or download it once"
        ) from e
    index = 0
    try:
        for index, row in enumerate(dataset, 1):
            yield index, row
    except Exception as e:  # streamed: a file that does not parse, or the network, fails here rather than above
        raise DataError(f"hf:{name}: reading failed after row {index} ({_first_line(e)})") from e


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _is_saved_dict(name: str) -> bool:
    return Path(name, "dataset_dict.json").is_file()
