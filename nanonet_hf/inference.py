"""Batched prediction of logits for a list of texts, with any sequence classifier and its own tokenizer."""

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase


@torch.no_grad()
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
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    chunks = []
    for start in range(0, len(order), batch_size):
        batch = [texts[i] for i in order[start : start + batch_size]]
        inputs = tokenizer(batch, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        inputs = {key: value.to(device) for key, value in inputs.items()}
        outputs = model(**inputs)
        logits = outputs if isinstance(outputs, torch.Tensor) else outputs.logits
        chunks.append(logits.float().cpu().numpy())
    if not chunks:
        return np.zeros((0, model.config.num_labels), dtype=np.float32)
    stacked = np.concatenate(chunks)
    result = np.empty_like(stacked)
    result[order] = stacked
    return result
