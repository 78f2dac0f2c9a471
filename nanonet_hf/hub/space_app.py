"""Gradio demo of a nanonet_hf student: type a text, see the top classes; with several students (a family of
depths), pick the one that answers.

This file is copied as `app.py` into the Space folder that `nanonet_hf.hub.write_space` writes; it needs only
gradio and transformers. It reads `space_config.json` beside it; the environment variable `NANONET_MODEL` (a Hub
repository id or a local folder) overrides the model named there (and the choice of models).

    python app.py            # serves on http://127.0.0.1:7860
"""

import functools
import json
import os

import gradio as gr
from transformers import pipeline

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG_FILE = "space_config.json"


def load_config(path: str = os.path.join(HERE, CONFIG_FILE)) -> dict:
    with open(path) as handle:
        return json.load(handle)


def build_demo(config: dict) -> gr.Blocks:
    """The Gradio interface for `config`: `model`, and optional `models` (a label for each model to pick from),
    `title`, `description`, `examples`, `top_k`."""
    override = os.environ.get("NANONET_MODEL")
    models = {"model": override} if override else config.get("models") or {"model": config["model"]}
    first = next((label for label, model in models.items() if model == config["model"]), next(iter(models)))

    @functools.cache
    def classifier(label: str):  # each model is loaded once, when first picked
        return pipeline("text-classification", model=models[label], top_k=None)

    classifier(first)

    def predict(text: str, label: str = first) -> dict[str, float]:
        if not text or not text.strip():
            return {}
        scores = classifier(label)([text])[0]  # a list in, one list of {label, score} per text out (top_k=None: all)
        return {item["label"]: float(item["score"]) for item in scores}

    inputs = [gr.Textbox(label="Text", lines=3, placeholder="Type a text to classify")]
    if len(models) > 1:
        inputs.append(gr.Radio(choices=list(models), value=first, label="Model"))
    return gr.Interface(
        fn=predict,
        inputs=inputs,
        outputs=gr.Label(num_top_classes=config.get("top_k", 3), label="Predicted class"),
        examples=[[text] + ([first] if len(models) > 1 else []) for text in config.get("examples", [])] or None,
        title=config.get("title", "Text classifier"),
        description=config.get("description"),
        flagging_mode="never",
        cache_examples=False,
    )


if __name__ == "__main__":
    build_demo(load_config()).launch()
