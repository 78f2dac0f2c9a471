"""Writes that never leave a half-written result behind: build in a temporary sibling, then move into place."""

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary folder beside `path`; when the block succeeds it replaces `path`, else it is removed.

    A crash inside the block leaves at most a `.tmp-*` folder, never a `path` that looks complete.
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(path)}-", dir=parent)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_directory(tmp, path)


def replace_directory(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move the folder `source` to `path` (same file system), replacing any folder there with renames only."""
    path = os.path.abspath(path)
    old = None
    if os.path.exists(path):
        old = tempfile.mkdtemp(prefix=f".old-{os.path.basename(path)}-", dir=os.path.dirname(path))
        os.replace(path, os.path.join(old, "previous"))
    os.replace(source, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | os.PathLike, data) -> None:
    """Write `data` as indented JSON through a temporary file and an atomic rename."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def folder_fingerprint(path: str | os.PathLike, names: list[str] | None = None) -> str:
    """A hash of a model folder's `config.json` and `*.safetensors` (or of the files `names` in it), so that a changed
    model never reuses what was cached for the old one; a path that is not a folder (a Hub id) is its own key."""
    path = str(path)
    if not os.path.isdir(path):
        return hashlib.sha256(path.encode()).hexdigest()[:16]
    chosen = names if names is not None else [n for n in os.listdir(path) if n == "config.json" or n.endswith(".safetensors")]
    digest = hashlib.sha256()
    for name in sorted(chosen):
        digest.update(name.encode())
        with open(os.path.join(path, name), "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def folder_parameters(path: str | os.PathLike) -> int | None:
    """How many weights the `*.safetensors` files of a model folder hold (read from their headers, nothing loaded);
    `None` for a path that is not a folder with such files (a Hub id)."""
    from safetensors import safe_open

    path = str(path)
    files = sorted(n for n in os.listdir(path) if n.endswith(".safetensors")) if os.path.isdir(path) else []
    if not files:
        return None
    total = 0
    for name in files:
        with safe_open(os.path.join(path, name), framework="pt") as handle:
            for key in handle.keys():
                shape = handle.get_slice(key).get_shape()
                count = 1
                for size in shape:
                    count *= size
                total += count
    return total


def weights_mb(path: str | os.PathLike) -> float:
    """Megabytes of the weight files (`.safetensors`, `.onnx`) of a file, or directly in a folder (not its subfolders:
    a student folder's `onnx/` is a tier of its own)."""
    files = [os.path.join(path, name) for name in os.listdir(path)] if os.path.isdir(path) else [path]
    return sum(os.path.getsize(file) for file in files if os.path.isfile(file) and str(file).endswith((".safetensors", ".onnx"))) / 1e6


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest `checkpoint-N` folder of `output_dir` that holds its trainer state and weights (Trainer writes the
    state last, so a run killed while saving leaves a folder without it), or `None`."""
    from transformers.trainer import TRAINER_STATE_NAME
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
    from transformers.utils import SAFE_WEIGHTS_NAME

    if not os.path.isdir(output_dir):
        return None
    steps = sorted(
        (int(match.group(1)), name)
        for name in os.listdir(output_dir)
        if (match := re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", name))
    )
    for _, name in reversed(steps):
        folder = os.path.join(output_dir, name)
        if os.path.isfile(os.path.join(folder, TRAINER_STATE_NAME)) and os.path.isfile(os.path.join(folder, SAFE_WEIGHTS_NAME)):
            return folder
        logger.warning("Skipping the incomplete checkpoint %s (killed while saving?).", folder)
    return None


EXPORT_MARKERS = ("results.json", "student")  # what a finished run leaves in its output_dir


def check_no_previous_export(output_dir: str | os.PathLike, *, overwrite: bool, resuming: bool) -> None:
    """Raise if `output_dir` holds a previous run's export (`results.json` or `student/`), unless `overwrite` or
    `resuming`: a new run would otherwise replace that student without a word."""
    if overwrite or resuming or not os.path.isdir(output_dir):
        return
    found = [name for name in EXPORT_MARKERS if os.path.exists(os.path.join(output_dir, name))]
    if found:
        raise ValueError(
            f"output_dir {output_dir} holds a previous run's export ({', '.join(found)}); this run would replace it. "
            "Choose another output_dir, pass --overwrite_output_dir true (overwrite_output_dir=True) to replace it, or "
            "--resume_from_checkpoint to continue that run."
        )
