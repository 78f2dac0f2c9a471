"""Data views: each student sees the batch differently, so that peers disagree usefully (DisCo, PS-Net).

A view is named per student; `student_views` cycles a list over the K students (`"cutoff,shuffle"` gives students
0, 2 cutoff and 1, 3 shuffle):

- `dropout`: the batch as it is; the base's dropout (active in training) is the only noise.
- `cutoff`: about `cutoff_rate` of each row's content tokens (not [CLS], the last token, or padding) are removed from
  the attention mask of the student's layers, so no token attends to them.
- `shuffle`: the content tokens' positions are permuted, as if the words came in another order. The view is an order
  of the slots (`position_order`); the cohort turns it into position ids in the model's own numbering (0 … L−1 for
  BERT, from `padding_idx + 1` for RoBERTa). Models with relative or rotary positions refuse it
  ([`nanonet_hf.architectures`]).
- `adversarial`: a one-step adversarial perturbation of the student's input hidden states (the embeddings when every
  layer has adapters): random noise → gradient of the student's loss w.r.t. the noise → a step of L2 norm
  `adversarial_epsilon` per token along it (VAT/FGM-like). Finding the step costs one extra forward and backward of
  the cohort.

Every view is a tensor per student block (`StudentViews`), which [`StudentCohort.forward`] applies to its
student-major K×B rows, so the whole cohort still runs in one forward. The functions here are pure and take their
randomness from torch's global generator (seeded by Trainer).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

VIEW_NAMES = ("dropout", "cutoff", "shuffle", "adversarial")


def parse_views(value: str | Sequence[str] | None, num_students: int) -> list[str]:
    """One view name per student: `value` (`"cutoff,shuffle"` or a list) cycled over `num_students`; `None` means
    `dropout` for all."""
    if value is None:
        names = ["dropout"]
    elif isinstance(value, str):
        names = [part.strip() for part in value.split(",") if part.strip()]
    else:
        names = [str(part).strip() for part in value]
    unknown = [name for name in names if name not in VIEW_NAMES]
    if not names or unknown:
        raise ValueError(f"student_views={value!r}: unknown view(s) {unknown or names}; choose from {list(VIEW_NAMES)}")
    return [names[k % len(names)] for k in range(num_students)]


@dataclass
class StudentViews:
    """Per-student inputs of one forward, each `[K, B, ...]` (student-major) or `None` when no student needs it.

    key_mask (`torch.BoolTensor` `[K, B, L]`): False where a token is cut from the attention of that student's layers.
    position_order (`torch.LongTensor` `[K, B, L]`): per student, the slot whose position each token takes (shuffle);
        `arange(L)` is the identity.
    perturbation (`torch.Tensor` `[K, B, L, H]`): added to the hidden states entering the student's first layer.
    """

    key_mask: torch.Tensor | None = None
    position_order: torch.Tensor | None = None
    perturbation: torch.Tensor | None = None


def content_tokens(attention_mask: torch.Tensor) -> torch.Tensor:
    """`[B, L]` bool: attended tokens other than the first (`[CLS]`/`<s>`) and the last attended one (`[SEP]`/`</s>`)."""
    mask = attention_mask.bool()
    content = mask.clone()
    content[:, 0] = False
    last = mask.long().cumsum(dim=1).argmax(dim=1)  # index of the last attended token
    content[torch.arange(len(mask), device=mask.device), last] = False
    return content


def cutoff_keep_mask(attention_mask: torch.Tensor, rate: float) -> torch.Tensor:
    """`[B, L]` bool, False for round(`rate` × content tokens) random content tokens of each row (at least one when
    a row has two or more), True elsewhere."""
    content = content_tokens(attention_mask)
    counts = content.sum(dim=1)
    drop = torch.round(counts.float() * rate).long()
    drop = torch.where((counts >= 2) & (drop == 0) & (rate > 0), torch.ones_like(drop), drop)
    scores = torch.rand(content.shape, device=content.device).masked_fill(~content, 2.0)
    ranks = scores.argsort(dim=1).argsort(dim=1)  # rank of each token's score within its row
    return ~(ranks < drop[:, None])


def shuffled_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """`[B, L]` slot order: 0 … L−1, except that each row's content tokens take a random permutation of their own
    slots (the first and last tokens and the padding keep theirs)."""
    content = content_tokens(attention_mask)
    batch, length = content.shape
    positions = torch.arange(length, device=content.device).expand(batch, length).clone()
    for row in range(batch):
        slots = content[row].nonzero().squeeze(-1)
        positions[row, slots] = slots[torch.randperm(len(slots), device=slots.device)]
    return positions


def adversarial_step(gradient: torch.Tensor, epsilon: float) -> torch.Tensor:
    """`gradient` `[..., L, H]` scaled to L2 norm `epsilon` at each token (zero where the gradient is zero)."""
    norm = gradient.norm(dim=-1, keepdim=True)
    return epsilon * gradient / norm.clamp_min(1e-12)


def make_student_views(views: Sequence[str], attention_mask: torch.Tensor, *, cutoff_rate: float = 0.2) -> StudentViews:
    """The key masks and position orders of `views` (one name per student) for a batch with `attention_mask`
    `[B, L]`; students without that view get the identity (all kept, slots 0 … L−1). The adversarial perturbation comes
    later, from a gradient (see [`MutualDistillationTrainer`])."""
    batch, length = attention_mask.shape
    key_mask = position_order = None
    if "cutoff" in views:
        key_mask = torch.stack(
            [
                cutoff_keep_mask(attention_mask, cutoff_rate)
                if view == "cutoff"
                else torch.ones(batch, length, dtype=torch.bool, device=attention_mask.device)
                for view in views
            ]
        )
    if "shuffle" in views:
        identity = torch.arange(length, device=attention_mask.device).expand(batch, length)
        position_order = torch.stack(
            [shuffled_positions(attention_mask) if view == "shuffle" else identity for view in views]
        )
    return StudentViews(key_mask=key_mask, position_order=position_order)


def student_views(
    names: Sequence[str],
    cohort,
    model_inputs: dict,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    *,
    temperature: float,
    cutoff_rate: float,
    adversarial_epsilon: float,
) -> StudentViews | None:
    """Each student's view (`names`) of a training batch for a [`StudentCohort`], or `None` when every student sees
    it as is.

    The adversarial view's step is the normalised gradient, w.r.t. a small random perturbation of its students'
    input hidden states, of those students' own supervised + distillation loss: one extra forward of the (unwrapped:
    no DDP gradient sync) cohort and a backward to the perturbation only (no parameter gets a gradient)."""
    from .losses import IGNORE_INDEX, distillation_loss, supervised_loss

    if all(view == "dropout" for view in names):
        return None
    views = make_student_views(names, model_inputs["attention_mask"], cutoff_rate=cutoff_rate)
    if "adversarial" not in names:
        return views
    batch, length = model_inputs["input_ids"].shape
    chosen = torch.tensor([view == "adversarial" for view in names], device=labels.device)
    shape = (cohort.num_students, batch, length, cohort.config.hidden_size)
    noise = adversarial_step(torch.randn(shape, device=labels.device), 1e-3) * chosen[:, None, None, None]
    noise.requires_grad_(True)
    views.perturbation = noise
    try:
        logits = cohort(**model_inputs, views=views).float()
        loss = supervised_loss(logits, labels)
        if teacher_logits is not None:
            loss = loss + distillation_loss(logits, teacher_logits, temperature=temperature, weights=labels == IGNORE_INDEX)
        loss = loss[chosen].sum()
        gradient = torch.autograd.grad(loss, noise, allow_unused=True)[0] if loss.requires_grad else None
    finally:
        cohort.release_routing()
    views.perturbation = adversarial_step(gradient.detach(), adversarial_epsilon) * chosen[:, None, None, None] if gradient is not None else None
    return views
