"""The losses against values written out from their formulas, on seeded tensors."""

import math

import pytest
import torch

from nanonet_hf.losses import IGNORE_INDEX, cohort_loss, distillation_loss, linear_rampup, mutual_loss, supervised_loss


def softmax(row, temperature=1.0):
    exps = [math.exp(x / temperature) for x in row]
    return [e / sum(exps) for e in exps]


def kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


@pytest.fixture
def logits():
    torch.manual_seed(0)
    return torch.randn(4, 3, 5)  # [B, K, C]


def test_supervised_loss_is_mean_ce_over_labeled_rows(logits):
    labels = torch.tensor([2, IGNORE_INDEX, 0, IGNORE_INDEX])
    got = supervised_loss(logits, labels)
    for k in range(3):
        expected = sum(-math.log(softmax(logits[b, k].tolist())[labels[b]]) for b in (0, 2)) / 2
        assert got[k].item() == pytest.approx(expected, rel=1e-5)


def test_supervised_loss_is_zero_and_finite_without_labeled_rows(logits):
    logits.requires_grad_(True)
    got = supervised_loss(logits, torch.full((4,), IGNORE_INDEX))
    assert torch.equal(got, torch.zeros(3))
    got.sum().backward()  # still attached to the graph
    assert torch.isfinite(logits.grad).all()


def test_distillation_loss_matches_formula(logits):
    teacher = torch.randn(4, 5)
    weights = torch.tensor([0.0, 1.0, 0.5, 1.0])
    tau = 2.0
    got = distillation_loss(logits, teacher, temperature=tau, weights=weights)
    for k in range(3):
        total = sum(
            weights[b].item() * kl(softmax(teacher[b].tolist(), tau), softmax(logits[b, k].tolist(), tau)) for b in range(4)
        )
        assert got[k].item() == pytest.approx(tau**2 * total / weights.sum().item(), rel=1e-5)


def test_distillation_loss_zero_weights_and_teacher_gets_no_gradient(logits):
    teacher = torch.randn(4, 5, requires_grad=True)
    logits.requires_grad_(True)
    got = distillation_loss(logits, teacher, weights=torch.zeros(4))
    assert torch.equal(got, torch.zeros(3))
    distillation_loss(logits, teacher, temperature=3.0).sum().backward()
    assert teacher.grad is None
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(logits, teacher, temperature=0)


def test_mutual_kl_matches_formula(logits):
    got = mutual_loss(logits, kind="kl")
    for k in range(3):
        expected = 0.0
        for b in range(4):
            p_k = softmax(logits[b, k].tolist())
            expected += sum(kl(softmax(logits[b, j].tolist()), p_k) for j in range(3) if j != k) / 2
        assert got[k].item() == pytest.approx(expected / 4, rel=1e-5)


def test_mutual_mse_matches_formula(logits):
    got = mutual_loss(logits, kind="mse")
    for k in range(3):
        expected = 0.0
        for b in range(4):
            for j in range(3):
                if j != k:
                    expected += ((logits[b, k] - logits[b, j]) ** 2).mean().item() / 2
        assert got[k].item() == pytest.approx(expected / 4, rel=1e-5)


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_mutual_loss_is_zero_when_students_agree_and_for_one_student(kind):
    same = torch.randn(4, 1, 5).expand(4, 3, 5)
    assert torch.allclose(mutual_loss(same, kind=kind), torch.zeros(3), atol=1e-6)
    assert torch.equal(mutual_loss(torch.randn(4, 1, 5), kind=kind), torch.zeros(1))


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_mutual_loss_gradient_of_student_k_flows_only_into_student_k(logits, kind):
    logits.requires_grad_(True)
    mutual_loss(logits, kind=kind)[1].backward()  # peers are detached: only student 1's logits get a gradient
    assert logits.grad[:, 1].abs().sum() > 0
    assert logits.grad[:, [0, 2]].abs().sum() == 0


def test_mutual_loss_rejects_unknown_kind(logits):
    with pytest.raises(ValueError, match="'kl' or 'mse'"):
        mutual_loss(logits, kind="cosine")


def test_linear_rampup():
    assert linear_rampup(0, 100, ratio=0.2) == 0.0
    assert linear_rampup(10, 100, ratio=0.2) == pytest.approx(0.5)
    assert linear_rampup(20, 100, ratio=0.2) == 1.0
    assert linear_rampup(90, 100, ratio=0.2) == 1.0
    assert linear_rampup(0, 100, ratio=0.0) == 1.0


def test_cohort_loss_is_the_weighted_sum_of_its_terms(logits):
    labels = torch.tensor([0, IGNORE_INDEX, 2, IGNORE_INDEX] + [IGNORE_INDEX] * (logits.shape[0] - 4))
    teacher = torch.randn(logits.shape[0], logits.shape[2], generator=torch.Generator().manual_seed(1))
    terms = cohort_loss(logits, labels, teacher, temperature=2.0, lambda_kd=0.5, lambda_mut=3.0, mutual_weight=0.25, mutual_kind="mse")
    unlabeled = labels == IGNORE_INDEX
    sup = supervised_loss(logits, labels)
    kd = distillation_loss(logits, teacher, temperature=2.0, weights=unlabeled)
    mut = mutual_loss(logits, kind="mse")
    torch.testing.assert_close(terms.per_student, sup + 0.5 * kd + 3.0 * 0.25 * mut)
    torch.testing.assert_close(terms.total, terms.per_student.sum())
    torch.testing.assert_close(terms.distillation, kd)
    # no teacher (or lambda_kd 0): no distillation term; explicit row weights replace the unlabeled mask
    assert (cohort_loss(logits, labels).distillation == 0).all()
    weights = torch.rand(logits.shape[0], logits.shape[1], generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(
        cohort_loss(logits, labels, teacher, kd_weights=weights).distillation,
        distillation_loss(logits, teacher, temperature=2.0, weights=weights),
    )


def test_per_student_mutual_weights_scale_each_students_mutual_term():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 2, 3, requires_grad=True), torch.tensor([0, 1, -100, -100, -100, -100])
    both = cohort_loss(logits, labels, lambda_mut=1.0)
    one_way = cohort_loss(logits, labels, lambda_mut=torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(one_way.per_student[1], both.per_student[1])  # student 1 still learns from student 0
    torch.testing.assert_close(one_way.per_student[0], both.supervised[0] + both.distillation[0])  # student 0 does not
    one_way.total.backward()
    assert logits.grad is not None
