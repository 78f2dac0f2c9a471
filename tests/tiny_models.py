"""Tiny random models of every supported architecture (nanonet_hf/architectures.py), built from their configs, over a
word-level vocabulary of the toy data, saved two ways: as a `...ForSequenceClassification` checkpoint and as the
pre-training checkpoint users download (masked LM; ELECTRA's discriminator). A pre-training checkpoint lacks the
classification head and, for BERT, the pooler: transformers draws them at load.

Hidden size 16, 3 layers, 2 heads, so a test runs in milliseconds. The padding token is id 1, RoBERTa's and MPNet's,
so their positions start at 2 as in the real models.
"""

import os

import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertTokenizerFast,
    CamembertConfig,
    CamembertForMaskedLM,
    DebertaV2Config,
    DebertaV2ForMaskedLM,
    DistilBertConfig,
    DistilBertForMaskedLM,
    ElectraConfig,
    ElectraForPreTraining,
    MPNetConfig,
    MPNetForMaskedLM,
    ModernBertConfig,
    ModernBertForMaskedLM,
    RobertaConfig,
    RobertaForMaskedLM,
    XLMRobertaConfig,
    XLMRobertaForMaskedLM,
    AutoModelForSequenceClassification,
)

from .conftest import CLASS_WORDS, SHARED_WORDS

SPECIALS = ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"]  # ids 0..4: CLS 0, PAD 1, SEP 2
VOCAB = [*SPECIALS, *SHARED_WORDS, *sum(CLASS_WORDS.values(), [])]
# a wide initialisation (transformers' default is 0.02): logits of order one, so that a routing mistake shows far
# above the tests' tolerance of 1e-5
SIZES = dict(
    vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
    initializer_range=0.3,
)  # fmt: skip
IDS = dict(pad_token_id=1, bos_token_id=0, eos_token_id=2)
BERT_LIKE = dict(**SIZES, **IDS, max_position_embeddings=66)


def _modernbert(pooling: str) -> ModernBertConfig:
    # a sliding window of 4 tokens on the middle layer, so that the sliding mask differs from the full one
    return ModernBertConfig(
        **SIZES, **IDS, cls_token_id=0, sep_token_id=2, max_position_embeddings=64, global_attn_every_n_layers=2,
        local_attention=4, classifier_pooling=pooling,
    )  # fmt: skip


# name -> (config, pre-training class, the tokenizer's model inputs)
TINY = {
    "bert": (BertConfig(**BERT_LIKE), BertForMaskedLM, ("input_ids", "token_type_ids", "attention_mask")),
    "roberta": (RobertaConfig(**BERT_LIKE), RobertaForMaskedLM, ("input_ids", "attention_mask")),
    "xlm-roberta": (XLMRobertaConfig(**BERT_LIKE), XLMRobertaForMaskedLM, ("input_ids", "attention_mask")),
    "camembert": (CamembertConfig(**BERT_LIKE), CamembertForMaskedLM, ("input_ids", "attention_mask")),
    "electra": (
        ElectraConfig(**BERT_LIKE, embedding_size=8),  # embeddings projected up to the hidden size, as in ELECTRA
        ElectraForPreTraining,
        ("input_ids", "token_type_ids", "attention_mask"),
    ),
    "mpnet": (MPNetConfig(**BERT_LIKE), MPNetForMaskedLM, ("input_ids", "attention_mask")),
    "distilbert": (
        DistilBertConfig(
            vocab_size=len(VOCAB), dim=16, n_layers=3, n_heads=2, hidden_dim=32, max_position_embeddings=64,
            pad_token_id=1, initializer_range=0.3,
        ),
        DistilBertForMaskedLM,
        ("input_ids", "attention_mask"),
    ),
    "deberta-v3": (  # DeBERTa-v3's scheme: relative positions only, shared attention keys, buckets
        DebertaV2Config(
            **BERT_LIKE, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=8, share_att_key=True,
            position_biased_input=False, norm_rel_ebd="layer_norm", type_vocab_size=0, max_relative_positions=-1,
        ),  # fmt: skip
        DebertaV2ForMaskedLM,
        ("input_ids", "token_type_ids", "attention_mask"),
    ),
    "modernbert-cls": (_modernbert("cls"), ModernBertForMaskedLM, ("input_ids", "attention_mask")),
    "modernbert-mean": (_modernbert("mean"), ModernBertForMaskedLM, ("input_ids", "attention_mask")),
}
KINDS = ("classifier", "pretrained")


def tiny_tokenizer(model_inputs) -> BertTokenizerFast:
    # transformers 5 takes the vocabulary itself (a `vocab_file=` keyword is silently ignored)
    return BertTokenizerFast(
        vocab={token: index for index, token in enumerate(VOCAB)},
        do_lower_case=True,
        cls_token="[CLS]", pad_token="[PAD]", sep_token="[SEP]", unk_token="[UNK]", mask_token="[MASK]",
        model_input_names=list(model_inputs),
    )  # fmt: skip


def save_tiny(name: str, kind: str, folder: str) -> str:
    """Save the tiny `name` model as a `kind` checkpoint (`"classifier"` or `"pretrained"`) with its tokenizer."""
    config, pretraining_class, model_inputs = TINY[name]
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config) if kind == "classifier" else pretraining_class(config)
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder)
    tiny_tokenizer(model_inputs).save_pretrained(folder)
    return folder
