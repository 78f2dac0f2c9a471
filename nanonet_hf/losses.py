"""The losses of mutual distillation, as pure functions.

Tensors in, tensor out, keyword-only knobs, no trainer state. Every function takes the cohort's logits shaped
`[batch, K, classes]` (K students, see `StudentCohort.forward`) and returns one loss per student, shaped `[K]`, so
the trainer can log each student's terms and sum them: students never see each other's gradients.

Rows are selected with masks rather than by indexing, so a batch with no row of a kind (no labeled row, no
unlabeled row) gives a finite zero that is still attached to the graph.
"""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # label of an unlabeled row, as in transformers


def _masked_mean(per_row: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean over rows of `per_row` `[B, K]` with `weights` `[B]` (shared) or `[B, K]` (per student); zero
    for a student whose weights are all zero."""
    weights = weights.to(per_row.dtype)
    if weights.dim() == 1:
        weights = weights[:, None]
    total = weights.sum(dim=0)
    # clamp keeps an empty mask at 0 / 1 = 0 instead of 0 / 0 = NaN (HF's CE over all -100 labels returns NaN)
    return (per_row * weights).sum(dim=0) / total.clamp(min=1e-12)  # [K]


def supervised_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each student on the labeled rows (`labels != -100`).

    Args:
        logits (`torch.Tensor`): `[B, K, C]` student logits.
        labels (`torch.Tensor`): `[B]` class ids, `-100` for unlabeled rows.

    Returns:
        `torch.Tensor`: `[K]`, the mean CE over labeled rows; zero for every student when no row is labeled.
    """
    batch, num_students, num_classes = logits.shape
    labeled = labels != IGNORE_INDEX  # [B]
    targets = labels.clamp(min=0)[:, None].expand(batch, num_students)  # [B, K]
    per_row = F.cross_entropy(logits.reshape(-1, num_classes), targets.reshape(-1), reduction="none")
    return _masked_mean(per_row.view(batch, num_students), labeled)  # [K]


def distillation_loss(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Knowledge distillation: τ² · Σ_u w_u · KL(softmax(t_u/τ) ‖ softmax(z_u/τ)) / Σ_u w_u for each student.

    Args:
        logits (`torch.Tensor`): `[B, K, C]` student logits.
        teacher_logits (`torch.Tensor`): `[B, C]` teacher logits (no gradient flows into them).
        temperature (`float`, *optional*, defaults to `1.0`): softening temperature τ; the τ² factor keeps gradient
            magnitudes comparable across temperatures (Hinton et al., 2015).
        weights (`torch.Tensor`, *optional*): `[B]` non-negative row weights, e.g. 1 for unlabeled rows and 0 for the
            rest, or `[B, K]` weights per student (see [`confidence_need_weights`]). Defaults to all ones.

    Returns:
        `torch.Tensor`: `[K]`; zero for a student whose weights are all zero.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if weights is None:
        weights = torch.ones(logits.shape[0], device=logits.device)
    teacher_logp = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)[:, None, :]  # [B, 1, C]
    student_logp = F.log_softmax(logits.float() / temperature, dim=-1)  # [B, K, C]
    per_row = (teacher_logp.exp() * (teacher_logp - student_logp)).sum(dim=-1)  # [B, K]
    return temperature**2 * _masked_mean(per_row, weights)


class RowWeights(NamedTuple):
    weights: torch.Tensor  # [B, K]
    keep: torch.Tensor  # [B, K] bool
    confidence: torch.Tensor  # [B] teacher's max probability
    need: torch.Tensor  # [B, K] student entropy / log C
    teacher_class: torch.Tensor  # [B]


def confidence_need_weights(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    teacher_thresholds: torch.Tensor,
    student_thresholds: torch.Tensor,
    rows: torch.Tensor | None = None,
) -> RowWeights:
    """LLKD's weighting of distillation rows: teacher confidence × student need, per student.

    With p_T the teacher's probabilities, ĉ = argmax p_T its class, conf = max p_T, and H_k the entropy of student k
    divided by log C (its need, in [0, 1]), a row is kept for student k when conf ≥ τ_T(ĉ) and H_k ≥ τ_S(ĉ), and
    weighted by conf · H_k: rows the teacher is sure of and the student is not teach the most.

    Args:
        logits (`torch.Tensor`): `[B, K, C]` student logits (only their values are used: no gradient flows).
        teacher_logits (`torch.Tensor`): `[B, C]`.
        teacher_thresholds (`torch.Tensor`): `[C]` per-class thresholds τ_T on the teacher's confidence.
        student_thresholds (`torch.Tensor`): `[C]` per-class thresholds τ_S on the students' normalised entropy.
        rows (`torch.Tensor`, *optional*): `[B]` mask of the rows that take part (e.g. the unlabeled ones).

    Returns:
        [`RowWeights`]: `weights` `[B, K]` and `keep` `[B, K]` (zero outside `rows`), `confidence` `[B]`, `need`
        `[B, K]`, `teacher_class` `[B]`.
    """
    num_classes = logits.shape[-1]
    with torch.no_grad():
        teacher_probs = F.softmax(teacher_logits.float(), dim=-1)
        confidence, teacher_class = teacher_probs.max(dim=-1)  # [B]
        student_logp = F.log_softmax(logits.detach().float(), dim=-1)  # [B, K, C]
        need = -(student_logp.exp() * student_logp).sum(-1) / math.log(max(num_classes, 2))  # [B, K] in [0, 1]
        keep = (confidence >= teacher_thresholds.to(confidence.device)[teacher_class])[:, None]
        keep = keep & (need >= student_thresholds.to(need.device)[teacher_class][:, None])  # [B, K]
        if rows is not None:
            keep = keep & rows.bool()[:, None]
        weights = keep.float() * confidence[:, None] * need
    return RowWeights(weights, keep, confidence, need, teacher_class)


def class_sums(values: torch.Tensor, classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class sums `[C]` of `values` `[N]` grouped by `classes` `[N]`."""
    return torch.zeros(num_classes, dtype=values.dtype, device=values.device).index_add_(0, classes, values)


def mutual_loss(
    logits: torch.Tensor,
    *,
    kind: str = "kl",
    temperature: float = 1.0,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mutual learning: each student k is pulled towards every peer j ≠ k, whose logits are detached.

    L_mut^k = 1/(K−1) · Σ_{j≠k} D(z_k, stopgrad z_j), averaged over rows.

    Args:
        logits (`torch.Tensor`): `[B, K, C]` student logits.
        kind (`str`, *optional*, defaults to `"kl"`): `"kl"` for KL(softmax(z_j/τ) ‖ softmax(z_k/τ)) · τ² as in deep
            mutual learning, `"mse"` for the mean squared difference of logits as in DisCo and PS-Net.
        temperature (`float`, *optional*, defaults to `1.0`): softening temperature of the `"kl"` kind.
        weights (`torch.Tensor`, *optional*): `[B]` row weights. Defaults to all ones.

    Returns:
        `torch.Tensor`: `[K]`; zeros when K = 1 or when all students agree.
    """
    batch, num_students, num_classes = logits.shape
    if weights is None:
        weights = torch.ones(batch, device=logits.device)
    if num_students == 1:
        return (logits * 0).sum(dim=(0, 2))  # [K], attached to the graph
    peers = logits.detach()
    if kind == "kl":
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        logp = F.log_softmax(logits.float() / temperature, dim=-1)  # [B, K, C] student k
        peer_logp = F.log_softmax(peers.float() / temperature, dim=-1)  # [B, K, C] peer j
        # pair[b, k, j] = KL(p_j ‖ p_k) = Σ_c p_j (log p_j − log p_k)
        pair = (peer_logp.exp()[:, None, :, :] * (peer_logp[:, None, :, :] - logp[:, :, None, :])).sum(-1)
        pair = pair * temperature**2  # [B, K, K]
    elif kind == "mse":
        pair = ((logits.float()[:, :, None, :] - peers.float()[:, None, :, :]) ** 2).mean(-1)  # [B, K, K]
    else:
        raise ValueError(f"mutual loss kind must be 'kl' or 'mse', got {kind!r}")
    # the diagonal (k = j) is zero for both kinds, so summing over all j and dividing by K − 1 averages the peers
    per_row = pair.sum(dim=-1) / (num_students - 1)  # [B, K]
    return _masked_mean(per_row, weights)


def embedding_loss(embeddings: torch.Tensor, teacher_embeddings: torch.Tensor) -> torch.Tensor:
    """Embedding distillation: each student's sentence embeddings are pulled to relate the batch's rows as the
    teacher's do, by the mean squared difference of their pairwise cosine similarities (SetFit's distiller, whose
    `CosineSimilarityLoss` regresses the student's cosine of a pair on the teacher's, here on every pair of the batch).

        L_emb^k = mean_{i≠j} (cos(e_k(x_i), e_k(x_j)) − cos(t(x_i), t(x_j)))²

    Similarities, not the embeddings themselves, are matched, so the teacher's width may differ from the students'
    (MPNet's 768 against MiniLM's 384) with no projection to learn and nothing to drop at export.

    Args:
        embeddings (`torch.Tensor`): `[B, K, H]` student sentence embeddings ([`StudentCohort.forward`] with
            `return_embeddings=True`).
        teacher_embeddings (`torch.Tensor`): `[B, D]` teacher sentence embeddings (no gradient flows into them).

    Returns:
        `torch.Tensor`: `[K]`; zero for a batch of one row (it has no pair).
    """
    batch = embeddings.shape[0]
    students = F.normalize(embeddings.float(), dim=-1)  # [B, K, H]
    teacher = F.normalize(teacher_embeddings.detach().float(), dim=-1)  # [B, D]
    similarities = torch.einsum("ikh,jkh->kij", students, students)  # [K, B, B]
    targets = teacher @ teacher.T  # [B, B]
    pairs = ~torch.eye(batch, dtype=torch.bool, device=embeddings.device)  # every ordered pair i ≠ j
    squared = (similarities - targets[None]) ** 2 * pairs[None]
    return squared.sum(dim=(1, 2)) / pairs.sum().clamp(min=1)  # [K]


def linear_rampup(step: int, total_steps: int, *, ratio: float) -> float:
    """Weight r(t) = min(1, t / (ratio · T)) of the mutual term; 1 from the start when `ratio` is 0."""
    ramp_steps = ratio * total_steps
    if ramp_steps <= 0:
        return 1.0
    return min(1.0, step / ramp_steps)


class CohortLoss(NamedTuple):
    """The step's loss and its terms: `total` (scalar, Σ_k L^k, what is back-propagated), `per_student` `[K]` (L^k),
    and each term before weighting, `[K]`: `supervised`, `distillation`, `mutual`, `embedding`."""

    total: torch.Tensor
    per_student: torch.Tensor
    supervised: torch.Tensor
    distillation: torch.Tensor
    mutual: torch.Tensor
    embedding: torch.Tensor


def cohort_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    *,
    temperature: float = 2.0,
    lambda_kd: float = 1.0,
    lambda_mut: float | torch.Tensor = 1.0,
    mutual_weight: float = 1.0,
    mutual_kind: str = "kl",
    kd_weights: torch.Tensor | None = None,
    embeddings: torch.Tensor | None = None,
    teacher_embeddings: torch.Tensor | None = None,
    lambda_embedding: float = 0.0,
) -> CohortLoss:
    """The loss of the cohort, for each student k (METHOD.md):

        L^k = CE(z_k(x_l), y) + λ_kd · KD(t(x_u) ‖ z_k(x_u)) + λ_mut · r · 1/(K−1) Σ_{j≠k} D(z_k, stopgrad z_j)
              + λ_emb · L_emb^k

    The one definition the trainer and the benchmarks share.

    Args:
        logits (`torch.Tensor`): `[B, K, C]` student logits.
        labels (`torch.Tensor`): `[B]` class ids, `-100` on unlabeled rows.
        teacher_logits (`torch.Tensor`, *optional*): `[B, C]`; without them (or with `lambda_kd` 0) KD is zero.
        temperature (`float`): the distillation temperature τ.
        lambda_kd, lambda_mut (`float`): the weights of distillation and of the mutual term; `lambda_mut` may be a
            `[K]` tensor, one weight per student (how much each learns from its peers).
        mutual_weight (`float`): r, the ramp-up of the mutual term ([`linear_rampup`]).
        mutual_kind (`str`): `"kl"` or `"mse"` ([`mutual_loss`]).
        kd_weights (`torch.Tensor`, *optional*): distillation row weights `[B]` or `[B, K]` (LLKD's
            [`confidence_need_weights`]); defaults to the unlabeled rows.
        embeddings, teacher_embeddings (`torch.Tensor`, *optional*): `[B, K, H]` and `[B, D]` sentence embeddings of
            the students and the teacher, on every row; with `lambda_embedding` > 0 they add [`embedding_loss`].
    """
    supervised = supervised_loss(logits, labels)
    if teacher_logits is not None and lambda_kd > 0:
        weights = kd_weights if kd_weights is not None else labels == IGNORE_INDEX
        distillation = distillation_loss(logits, teacher_logits, temperature=temperature, weights=weights)
    else:
        distillation = torch.zeros_like(supervised)
    mutual = mutual_loss(logits, kind=mutual_kind)
    if lambda_embedding > 0 and (embeddings is None or teacher_embeddings is None):
        raise ValueError("lambda_embedding > 0 needs the students' embeddings and the teacher's")
    if lambda_embedding > 0:
        embedding = embedding_loss(embeddings, teacher_embeddings)
    else:
        embedding = torch.zeros_like(supervised)
    per_student = supervised + lambda_kd * distillation + lambda_mut * mutual_weight * mutual + lambda_embedding * embedding
    return CohortLoss(per_student.sum(), per_student, supervised, distillation, mutual, embedding)


LOSS_TERMS = ("supervised", "distillation", "mutual", "embedding")


def raise_if_not_finite(terms: torch.Tensor, *, step: int) -> None:
    """`terms` `[processes, 5, K]` (supervised, distillation, mutual, embedding, total per student): stop at the first
    NaN/inf with the step, the student and the loss term, before the optimizer can write it into the weights."""
    bad = (~torch.isfinite(terms[:, :4])).nonzero()
    if len(bad):
        process, term, student = bad[0].tolist()
        value = terms[process, term, student].item()
        raise FloatingPointError(
            f"Non-finite loss at step {step}: the {LOSS_TERMS[term]} loss of student {student} is {value} "
            f"(process {process}; {len(bad)} non-finite term(s) in all). Check the teacher logits and the data, "
            "or lower the learning rate; no weights were updated with it."
        )
