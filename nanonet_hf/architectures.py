"""The encoders a cohort can be built on: one entry per architecture, in one table.

A cohort runs K students in one forward by routing student-major row blocks through each student's adapter and head
([`nanonet_hf.routing`]). That needs a few facts per architecture, which transformers does not expose uniformly, so
they are written down here instead of guessed:

- `layers`: where the encoder layers are (a path in the `...ForSequenceClassification` model). Adapters, layer cuts
  (`student_layers`) and the shared trunk (`adapter_layers`) are counted in these.
- `lora_targets`: the default LoRA targets, every linear layer of the encoder layers (attention and feed-forward;
  PEFT matches a name as a suffix, so `output.dense` is both the attention's and the feed-forward's output). PEFT has
  no default for several of these models and would ask for `target_modules` (what these targets measured against
  the query and value projections alone is in docs/accuracy.md).
- `head`: the modules of the classification model that make up its head above the encoder. Every student gets its
  own copy of each (PEFT `modules_to_save`), so a head that is more than one Linear trains per student too.
- `base_pooler`: a pooler that belongs to the frozen base, above the encoder layers (BERT's `bert.pooler`, dense +
  tanh on the first token, which its head reads). LoRA may go there (`lora_target_modules` + `pooler.dense`); it runs
  after the layers, so the trunk below them stays shared.
- `positions`: how the model numbers token positions. `"absolute"`: learned embeddings of 0 … L−1; `"offset"`:
  learned embeddings numbered from `padding_idx + 1`, padding at `padding_idx` (RoBERTa's scheme); `"relative"`:
  relative positions (with `absolute_too`, learned absolute ones besides, which the shuffle view cannot move
  consistently); `"rotary"`: rotary embeddings. The shuffle view permutes positions in the model's own numbering, so
  it is offered only for `"absolute"` and `"offset"`.
- `layer_inputs`: the arguments of a layer's forward (besides the hidden states) that hold one row per text: the
  attention mask (`"mask"`, which the cutoff view edits) and other batch-major tensors (`"batch"`, e.g. MPNet's
  position bias). At the first adapted layer these are repeated K times; every other argument (relative-position
  tables, rotary caches) is passed on untouched, whatever its shape.
- `per_student`: submodules of a layer that apply a student's weights to something that is not batch-major (DeBERTa's
  attention projects its relative-position embeddings with the query and key projections). They run once per
  student block, with that student's adapter, and `per_student_inputs` names their batch-major arguments.
- `layer_config`: config attributes with one entry per layer, cut with the layers.
- `first_layer_fixed`: the model builds its first layer differently (ModernBERT: no attention LayerNorm), so a cut
  base must keep layer 0.

To add an architecture, add an entry and its tiny config to `tests/architectures.py`; the parametrized tests then
check every property above against the model's own forward.
"""

from dataclasses import dataclass, field
from typing import Literal

from transformers import PretrainedConfig

# the kinds of student adapter that run K students in one mixed batch (LoRA, per-row routed; bias offsets)
ADAPTER_TYPES = ("lora", "bias")


@dataclass(frozen=True)
class Architecture:
    name: str
    layers: str
    lora_targets: tuple[str, ...]
    head: tuple[str, ...]
    positions: Literal["absolute", "offset", "relative", "rotary"]
    pooling: str  # how the head reads the encoder, for the README and errors
    layer_inputs: dict[str, Literal["mask", "batch"]] = field(default_factory=lambda: {"attention_mask": "mask"})
    per_student: tuple[str, ...] = ()
    per_student_inputs: tuple[str, ...] = ()
    layer_config: tuple[str, ...] = ()
    first_layer_fixed: bool = False
    absolute_too: bool = False
    base_pooler: str | None = None

    @property
    def shuffles(self) -> bool:
        """Whether the shuffle view can permute this model's positions (learned absolute positions only)."""
        return self.positions in ("absolute", "offset") and not self.absolute_too


_BERT_LINEARS = ("query", "key", "value", "output.dense", "intermediate.dense")

_ROBERTA_LIKE = dict(
    lora_targets=_BERT_LINEARS,
    head=("classifier",),
    positions="offset",
    pooling="first token → dense → tanh → out_proj (RobertaClassificationHead)",
)

ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture(
        name="BERT",
        layers="bert.encoder.layer",
        lora_targets=_BERT_LINEARS,
        head=("classifier",),
        positions="absolute",
        pooling="first token → pooler (dense + tanh, part of the frozen base) → classifier",
        base_pooler="bert.pooler",
    ),
    "roberta": Architecture(name="RoBERTa", layers="roberta.encoder.layer", **_ROBERTA_LIKE),
    "xlm-roberta": Architecture(name="XLM-RoBERTa", layers="roberta.encoder.layer", **_ROBERTA_LIKE),
    "camembert": Architecture(name="CamemBERT", layers="roberta.encoder.layer", **_ROBERTA_LIKE),
    "electra": Architecture(
        name="ELECTRA",
        layers="electra.encoder.layer",
        lora_targets=_BERT_LINEARS,
        head=("classifier",),
        positions="absolute",
        pooling="first token → dense → GELU → out_proj (ElectraClassificationHead)",
    ),
    "mpnet": Architecture(
        name="MPNet",
        layers="mpnet.encoder.layer",
        lora_targets=("q", "k", "v", "o", "intermediate.dense", "output.dense"),
        head=("classifier",),
        positions="relative",
        absolute_too=True,
        pooling="first token → dense → tanh → out_proj (MPNetClassificationHead)",
        layer_inputs={"attention_mask": "mask", "position_bias": "batch"},
    ),
    "distilbert": Architecture(
        name="DistilBERT",
        layers="distilbert.transformer.layer",
        lora_targets=("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"),
        head=("pre_classifier", "classifier"),
        positions="absolute",
        pooling="first token → pre_classifier → ReLU → classifier",
    ),
    "deberta-v2": Architecture(
        name="DeBERTa-v2/v3",
        layers="deberta.encoder.layer",
        lora_targets=("query_proj", "key_proj", "value_proj", "output.dense", "intermediate.dense"),
        head=("pooler", "classifier"),
        positions="relative",
        pooling="first token → ContextPooler (dense + GELU) → classifier",
        layer_inputs={"attention_mask": "mask", "query_states": "batch"},
        per_student=("attention.self",),
        per_student_inputs=("hidden_states", "attention_mask", "query_states"),
    ),
    "modernbert": Architecture(
        name="ModernBERT",
        layers="model.layers",
        lora_targets=("Wqkv", "Wo", "Wi"),
        head=("head", "classifier"),
        positions="rotary",
        pooling="`classifier_pooling`: first token or the masked mean → head (dense + act + norm) → classifier",
        layer_config=("layer_types",),
        first_layer_fixed=True,
    ),
}

# architectures that are refused with a reason of their own
REFUSED = {
    "albert": "ALBERT shares one set of layer weights across all its layers, so per-layer adapters, a shared trunk "
    "and `student_layers` cuts have no meaning for it",
}


def supported_names() -> str:
    return ", ".join(f"{arch.name} ({model_type})" for model_type, arch in ARCHITECTURES.items())


def architecture_of(config: PretrainedConfig) -> Architecture:
    """The table entry for `config.model_type`, or a ValueError that says what is supported (and, for a refused
    architecture, why it is not)."""
    model_type = getattr(config, "model_type", None)
    if model_type in REFUSED:
        raise ValueError(f"model_type {model_type!r} cannot be a cohort's base: {REFUSED[model_type]}.")
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"model_type {model_type!r} is not a supported student base. nanonet_hf runs K students in one forward "
            "by routing row blocks through each student's adapter and head, which it knows how to do for: "
            f"{supported_names()}. To add one, see nanonet_hf/architectures.py."
        )
    arch = ARCHITECTURES[model_type]
    if model_type == "deberta-v2" and getattr(config, "conv_kernel_size", 0):
        raise ValueError(
            "DeBERTa-v2 with a convolution layer (conv_kernel_size > 0, as in deberta-v2-xlarge) mixes the encoder's "
            "input with its first layer's output, which the cohort cannot share between students; "
            "DeBERTa-v3 checkpoints have none."
        )
    return arch
