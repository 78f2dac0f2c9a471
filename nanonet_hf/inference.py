"""Batched prediction for a list of texts with any transformers model and its own tokenizer: logits, or sentence
embeddings."""

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def predict_logits(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    *,
    batch_size: int = 64,
    max_length: int = 64,
) -> np.ndarray:
    """Logits for `texts`, in their order: `[N, C]` for a classifier, `[N, K, C]` for a [`StudentCohort`].

    Texts are batched by length so that padding stays short; the model is put in eval mode.
    """

    def logits(inputs: dict) -> torch.Tensor:
        outputs = model(**inputs)
        return outputs if isinstance(outputs, torch.Tensor) else outputs.logits

    return _predict(model, tokenizer, texts, logits, width=model.config.num_labels, batch_size=batch_size, max_length=max_length)


def predict_embeddings(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    *,
    batch_size: int = 64,
    max_length: int = 64,
) -> np.ndarray:
    """Sentence embeddings `[N, H]` of `texts` from a transformers model (e.g. a teacher classifier): the mean of its
    backbone's last hidden states over each text's tokens, as sentence-transformers pools MiniLM and MPNet."""

    def embeddings(inputs: dict) -> torch.Tensor:
        return mean_pool(model.base_model(**inputs)[0], inputs["attention_mask"])

    return _predict(model, tokenizer, texts, embeddings, width=model.config.hidden_size, batch_size=batch_size, max_length=max_length)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of `hidden` `[N, L, H]` over each row's real tokens (`attention_mask` `[N, L]`): `[N, H]`, the
    sentence embedding sentence-transformers takes from MiniLM and MPNet (the teacher's and the students' alike)."""
    mask = attention_mask.to(hidden.dtype)[..., None]
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


@torch.no_grad()
def _predict(model, tokenizer, texts: list[str], read, *, width: int, batch_size: int, max_length: int) -> np.ndarray:
    """`read(inputs)` on batches of `texts` sorted by length (short padding), returned in the texts' order."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    chunks = []
    for start in range(0, len(order), batch_size):
        batch = [texts[i] for i in order[start : start + batch_size]]
        inputs = tokenizer(batch, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        inputs = {key: value.to(device) for key, value in inputs.items()}
        chunks.append(read(inputs).float().cpu().numpy())
    if not chunks:
        return np.zeros((0, width), dtype=np.float32)
    stacked = np.concatenate(chunks)
    result = np.empty_like(stacked)
    result[order] = stacked
    return result
