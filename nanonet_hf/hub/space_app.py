"""Gradio demo of a nanonet_hf student: type a text, see the top classes; with several students (a family of
depths), pick the one that answers.

This file is copied as `app.py` into the Space folder that `nanonet_hf.hub.write_space` writes; it needs gradio
and transformers, and onnxruntime or model2vec for a faster tier. It reads `space_config.json` beside it; the
environment variable `NANONET_MODEL` (a Hub repository id or a local folder) overrides the model named there (and
the choice of models). The config's `tier` says what serves the texts: `pytorch` (the transformers pipeline),
`onnx` or `onnx-int8` (the student's `onnx/` graph with onnxruntime), `static` (the Model2Vec student in `static/`,
or a local folder holding one).

    python app.py            # serves on http://127.0.0.1:7860
"""

import functools
import json
import os

import gradio as gr
import numpy as np
from transformers import AutoConfig, AutoTokenizer, pipeline

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG_FILE = "space_config.json"


def load_config(path: str = os.path.join(HERE, CONFIG_FILE)) -> dict:
    with open(path) as handle:
        return json.load(handle)


def _file(model: str, name: str) -> str:
    """`name` in the student `model`: a local folder's file, or the Hub repository's (downloaded)."""
    if os.path.isdir(model):
        return os.path.join(model, name)
    from huggingface_hub import snapshot_download

    return os.path.join(snapshot_download(model, allow_patterns=[f"{name}/*" if "." not in name else name]), name)


def load_classifier(model: str, tier: str = "pytorch"):
    """A function of a list of texts giving, for each, the score of every class: `[{label: score}]`."""
    if tier == "static":
        from model2vec.inference import StaticModelPipeline

        folder = model if os.path.isfile(os.path.join(model, "head.safetensors")) else _file(model, "static")
        static = StaticModelPipeline.from_pretrained(folder)
        return lambda texts: [dict(zip(map(str, static.classes_), map(float, row))) for row in static.predict_proba(texts)]
    if tier in ("onnx", "onnx-int8"):
        import onnxruntime

        session = onnxruntime.InferenceSession(_file(model, "onnx/model_quantized.onnx" if tier == "onnx-int8" else "onnx/model.onnx"))
        tokenizer, id2label = AutoTokenizer.from_pretrained(model), AutoConfig.from_pretrained(model).id2label
        names = [item.name for item in session.get_inputs()]

        def classify(texts):
            inputs = tokenizer(texts, truncation=True, padding=True, return_tensors="np")
            logits = session.run(["logits"], {name: inputs[name] for name in names})[0]
            scores = np.exp(logits - logits.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            return [{id2label[k]: float(score) for k, score in enumerate(row)} for row in scores]

        return classify
    if tier != "pytorch":
        raise ValueError(f"tier must be 'pytorch', 'onnx', 'onnx-int8' or 'static', got {tier!r}")
    transformers_pipeline = pipeline("text-classification", model=model, top_k=None)
    # a list in, one list of {label, score} per text out (top_k=None: all)
    return lambda texts: [{item["label"]: float(item["score"]) for item in scores} for scores in transformers_pipeline(texts)]


def build_demo(config: dict) -> gr.Blocks:
    """The Gradio interface for `config`: `model`, and optional `models` (a label for each model to pick from),
    `title`, `description`, `examples`, `top_k`, `tier` (what serves the texts; default `pytorch`)."""
    override = os.environ.get("NANONET_MODEL")
    models = {"model": override} if override else config.get("models") or {"model": config["model"]}
    first = next((label for label, model in models.items() if model == config["model"]), next(iter(models)))

    @functools.cache
    def classifier(label: str):  # each model is loaded once, when first picked
        return load_classifier(models[label], config.get("tier", "pytorch"))

    classifier(first)

    def predict(text: str, label: str = first) -> dict[str, float]:
        if not text or not text.strip():
            return {}
        return classifier(label)([text])[0]

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
