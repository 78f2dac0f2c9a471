"""The students' base checkpoint: read its config and refuse what the run cannot take before any weight is loaded
([`check_base`]), and load it as a sequence classifier of the run's labels, cut to the layers kept ([`load_base`]).

The cohort builds its frozen base with it, and so does a teacher fine-tuned here from the same checkpoint.
"""

import os
from collections.abc import Sequence
from typing import NamedTuple

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel

from .architectures import Architecture, architecture_of
from .layer_plan import keep_layers, plan_layers, select_layers


class LoadedBase(NamedTuple):
    model: PreTrainedModel
    kept: list[int]  # the base layers kept
    new_weights: list[str]  # weights the checkpoint did not hold, drawn from the seed


def load_base(
    model_name_or_path: str | os.PathLike,
    *,
    id2label: dict[int, str],
    layers: Sequence[int] | None = None,
    seed: int = 0,
) -> LoadedBase:
    """Load a sequence classifier with the label space `id2label`, cut to the base layers `layers` (all by default).

    Weights the checkpoint lacks (the head; a pooler, when the checkpoint is a masked-LM or a bare encoder) are drawn
    from `seed`, so the same call gives the same model. Only safetensors weights are loaded (`use_safetensors=True`),
    and remote code is never trusted.
    """
    id2label = {int(index): str(name) for index, name in id2label.items()}
    config = AutoConfig.from_pretrained(
        model_name_or_path,
        num_labels=len(id2label),
        id2label=id2label,
        label2id={name: index for index, name in id2label.items()},
    )
    # before loading weights: an unsupported architecture or a bad cut fails here
    architecture = architecture_of(config) if layers is not None else None
    kept = select_layers(config.num_hidden_layers, None if layers is None else list(layers), architecture)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, info = AutoModelForSequenceClassification.from_pretrained(
                # a head for another label space is fine: every student re-initialises its own classifier
                model_name_or_path, config=config, use_safetensors=True, ignore_mismatched_sizes=True,
                output_loading_info=True,
            )  # fmt: skip
    except OSError as error:
        if os.path.isdir(model_name_or_path) and not any(
            name.endswith(".safetensors") for name in os.listdir(model_name_or_path)
        ):
            raise ValueError(
                f"{model_name_or_path} holds no .safetensors weights; nanonet_hf loads safetensors only (pickle "
                "weights can run code when loaded). Convert it with `save_pretrained` in a trusted environment."
            ) from error
        raise
    new_weights = sorted({*info["missing_keys"], *(key for key, *_ in info["mismatched_keys"])})
    if architecture is not None:
        keep_layers(model, kept)
    return LoadedBase(model, kept, new_weights)


def check_base(model_name_or_path: str, args) -> Architecture:
    """Read the base's config only and raise, before any weight is loaded, for an unsupported architecture or a layer
    plan (`args.student_layers`, `args.adapter_layers`, `args.num_students`) it cannot take. `args`: a
    [`MutualDistillationConfig`]."""
    config = AutoConfig.from_pretrained(model_name_or_path)
    return plan_layers(config, args.student_layers, args.adapter_layers, args.num_students)[0]


def max_tokens(config, tokenizer) -> int:
    """The most tokens per text this base takes: its tokenizer's `model_max_length` (when it sets one) and its
    `max_position_embeddings` (less `padding_idx + 1` where learned positions are numbered from there: RoBERTa's
    scheme, and MPNet's absolute positions)."""
    limits = [tokenizer.model_max_length] if tokenizer.model_max_length < 1_000_000 else []
    architecture = architecture_of(config)
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        offset = architecture.positions == "offset" or architecture.absolute_too
        limits.append(positions - ((config.pad_token_id or 0) + 1 if offset else 0))
    return int(min(limits)) if limits else 512
