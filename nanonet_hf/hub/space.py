"""A Gradio Space that demos a published student: `write_space` writes the folder, `push_space` uploads it.

The folder holds `app.py` (a copy of `space_app.py`), `space_config.json` (model, title, examples), a
`requirements.txt` and a `README.md` whose front matter tells the Hub to run it (`sdk: gradio`, `app_file: app.py`,
`models: [...]`).
"""

import json
import os
import shutil

from huggingface_hub import HfApi, SpaceCard, SpaceCardData

from ..files import atomic_directory
from ..results import package_versions
from .card import HUB_ID, template_path
from .push import check_repo_id, upload

APP_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "space_app.py")
# what a Space needs beyond transformers and torch to serve each tier
TIER_REQUIREMENTS = {"pytorch": [], "onnx": ["onnxruntime"], "onnx-int8": ["onnxruntime"], "static": ["model2vec"]}
SPACE_FILES = ("app.py", "space_config.json", "requirements.txt", "README.md")


def write_space(
    space_dir: str,
    model_id: str,
    *,
    title: str | None = None,
    description: str | None = None,
    examples: list[str] | tuple[str, ...] = (),
    top_k: int = 3,
    license: str | None = "apache-2.0",
    models: dict[str, str] | None = None,
    tier: str = "pytorch",
) -> str:
    """Write a Gradio Space folder that demos `model_id` (a Hub repository id, or a local folder for local runs).

    With `models` (a label for each model, e.g. `{"student 1 (3 layers)": "me/clf-student-1"}`), the demo lets the
    user pick the model (a family of students of different depths); `model_id` is the one picked first.

    `tier` is what serves the texts: `"pytorch"` (the transformers pipeline), `"onnx"` / `"onnx-int8"` (the student's
    ONNX graph, pushed with it when the run exported it) or `"static"` (its Model2Vec student, pushed as `static/`);
    [`nanonet_hf.deploy.tiers.fastest_tier`] names a run's fastest at batch 1.

    The folder is built in a temporary sibling and moved into place: an existing `space_dir` is replaced whole.
    """
    if not isinstance(model_id, str) or not model_id:
        raise ValueError(f"model_id must be a repository id or a folder, got {model_id!r}")
    models = dict(models or {})
    bad = [name for name, model in models.items() if not isinstance(model, str) or not model or not str(name).strip()]
    if bad:
        raise ValueError(f"models needs a label and a repository id or folder for each model; check {bad}")
    if models and model_id not in models.values():
        raise ValueError(f"model_id {model_id!r} is not one of models {sorted(models.values())}")
    if tier not in TIER_REQUIREMENTS:
        raise ValueError(f"tier must be one of {list(TIER_REQUIREMENTS)}, got {tier!r}")
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    examples = [text for text in examples if isinstance(text, str) and text.strip()]
    title = title or model_id.rstrip("/").split("/")[-1]
    on_hub = [model for model in (models.values() if models else [model_id]) if HUB_ID.match(model) and not os.path.exists(model)]
    versions = package_versions("gradio", "transformers")
    with atomic_directory(space_dir) as tmp:
        shutil.copyfile(APP_SOURCE, os.path.join(tmp, "app.py"))
        config = {"model": model_id, "title": title, "description": description, "examples": examples, "top_k": top_k,
                  "tier": tier}  # fmt: skip
        if models:
            config["models"] = models
        with open(os.path.join(tmp, "space_config.json"), "w") as handle:
            json.dump(config, handle, indent=2)
        requirements = [f"transformers>={versions.get('transformers', '5.0')}", "torch", *TIER_REQUIREMENTS[tier]]
        with open(os.path.join(tmp, "requirements.txt"), "w") as handle:
            handle.write("\n".join(requirements) + "\n")  # gradio itself comes with the Space's sdk_version
        card_data = SpaceCardData(
            title=title,
            sdk="gradio",
            sdk_version=versions.get("gradio"),
            app_file="app.py",
            models=on_hub or None,
            license=license,
            tags=["nanonet", "text-classification"],
            emoji="🏷️",
            colorFrom="indigo",
            colorTo="green",
            pinned=False,
        )
        card = SpaceCard.from_template(
            card_data, template_path=template_path("space_card.md"), model_id=model_id, on_hub=model_id in on_hub, title=title,
            description=description, models=models,
        )  # fmt: skip
        card.save(os.path.join(tmp, "README.md"))
    return os.path.abspath(space_dir)


def push_space(
    space_dir: str,
    space_repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload a folder written by `write_space` as a Gradio Space; returns the commit URL."""
    check_repo_id(space_repo_id, "space_repo_id")
    missing = [name for name in SPACE_FILES if not os.path.isfile(os.path.join(space_dir, name))]
    if missing:
        raise FileNotFoundError(f"{space_dir} lacks {missing}: write it with write_space first.")
    commit = upload(
        HfApi(endpoint=endpoint, token=token),
        space_repo_id,
        space_dir,
        source=space_dir,
        token=token,
        message=commit_message or "Upload nanonet_hf demo",
        private=private,
        repo_type="space",
        space_sdk="gradio",
    )
    return commit.commit_url
