"""Embedding distillation (`lambda_embedding`): the loss matches pairwise cosine similarities whatever the widths, the
cohort's one forward gives each student its own sentence embeddings on every architecture, the teacher's embeddings
are cached like its logits (SetFit body or classifier folder), the trainer trains with them on every architecture,
and what cannot give embeddings is refused before any work."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from nanonet_hf import MutualDistillationTrainer, StudentCohort, TeacherEnsemble, add_teacher_embeddings
from nanonet_hf.data import sample_per_class, tokenize, training_dataset
from nanonet_hf.inference import predict_embeddings
from nanonet_hf.losses import cohort_loss, embedding_loss
from nanonet_hf.teachers import SetFitTeacher

from .conftest import LABELS
from .test_pipeline import make_args, raw_splits
from .tiny_models import KINDS, TINY, save_tiny, tiny_tokenizer

TEXTS = ["the team score a goal today", "spicy pasta", "new laptop chip and code for the cloud server"]
CASES = [(name, kind) for name in TINY for kind in KINDS]


# ---- the loss ----


def test_embedding_loss_is_the_mean_squared_gap_of_pairwise_cosines_across_widths():
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(5, 12, generator=generator)
    students = torch.randn(5, 3, 8, generator=generator, requires_grad=True)  # K = 3, width 8 against the teacher's 12
    loss = embedding_loss(students, teacher)
    expected = []
    for k in range(3):
        gaps = [
            (F.cosine_similarity(students[i, k], students[j, k], dim=0) - F.cosine_similarity(teacher[i], teacher[j], dim=0)) ** 2
            for i in range(5) for j in range(5) if i != j
        ]  # fmt: skip
        expected.append(torch.stack(gaps).mean())
    torch.testing.assert_close(loss, torch.stack(expected))
    loss[1].backward()  # students never see each other's gradients
    assert students.grad[:, 1].abs().sum() > 0 and students.grad[:, [0, 2]].abs().sum() == 0


def test_embedding_loss_is_zero_when_the_student_relates_rows_as_the_teacher_does():
    teacher = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    rotation = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(2)))[0]
    student = (3.0 * teacher @ rotation)[:, None]  # rotated and scaled: the same cosines
    torch.testing.assert_close(embedding_loss(student, teacher), torch.zeros(1), atol=1e-6, rtol=0)
    assert embedding_loss(torch.randn(6, 1, 4), teacher).item() > 0.01
    assert embedding_loss(student[:1], teacher[:1]).item() == 0  # one row has no pair


def test_cohort_loss_adds_the_weighted_embedding_term_and_needs_both_embeddings():
    generator = torch.Generator().manual_seed(3)
    logits, labels = torch.randn(4, 2, 3, generator=generator), torch.tensor([0, 2, -100, -100])
    students, teacher = torch.randn(4, 2, 8, generator=generator), torch.randn(4, 6, generator=generator)
    plain = cohort_loss(logits, labels)
    with_embeddings = cohort_loss(logits, labels, embeddings=students, teacher_embeddings=teacher, lambda_embedding=0.5)
    torch.testing.assert_close(with_embeddings.embedding, embedding_loss(students, teacher))
    torch.testing.assert_close(with_embeddings.per_student, plain.per_student + 0.5 * with_embeddings.embedding)
    assert (plain.embedding == 0).all()
    with pytest.raises(ValueError, match="lambda_embedding"):
        cohort_loss(logits, labels, lambda_embedding=1.0)


# ---- the cohort's one forward, every architecture ----


@pytest.mark.parametrize("layout", [{}, {"student_layers": "0,2", "adapter_layers": 1}], ids=["all-layers", "cut-trunk"])
@pytest.mark.parametrize("case", CASES, ids=[f"{name}-{kind}" for name, kind in CASES])
def test_each_student_gets_its_own_mean_pooled_embeddings_in_the_one_forward(case, layout, tmp_path):
    name, kind = case
    path = save_tiny(name, kind, str(tmp_path / name))
    cohort = StudentCohort.from_pretrained(path, id2label=dict(enumerate(LABELS)), num_students=3, seed=0,
                                           lora_config=LoraConfig(r=4, lora_alpha=8, init_lora_weights=False), **layout).eval()  # fmt: skip
    batch = dict(tiny_tokenizer(TINY[name][2])(TEXTS, padding=True, return_tensors="pt"))
    with torch.no_grad():
        logits, embeddings = cohort(**batch, return_embeddings=True)
        torch.testing.assert_close(logits, cohort(**batch), atol=1e-6, rtol=0)
    assert embeddings.shape == (3, 3, cohort.config.hidden_size)
    backbone = cohort.peft_model.get_base_model().base_model
    mask = batch["attention_mask"].float()[..., None]
    for k, student in enumerate(cohort.student_names):
        seen = []
        hook = backbone.register_forward_hook(lambda module, args, output: seen.append(output[0]))
        with torch.no_grad(), cohort.single_student(student) as model:
            model(**batch)
        hook.remove()
        alone = (seen[0] * mask).sum(1) / mask.sum(1)
        torch.testing.assert_close(embeddings[:, k], alone, atol=1e-5, rtol=0)
    assert not torch.allclose(embeddings[:, 0], embeddings[:, 1], atol=1e-4)


# ---- the teacher's embeddings, cached ----


def test_teacher_embeddings_are_cached_and_need_no_training_the_second_time(tiny_model_dir, toy_pool, tmp_path):
    labeled, rest = sample_per_class(toy_pool, 4, seed=0)
    rows = training_dataset(labeled, rest.remove_columns("label"))
    teacher = SetFitTeacher(tiny_model_dir, labeled, num_iterations=1, batch_size=8, seed=0)
    done = add_teacher_embeddings(rows, teacher, label_names=LABELS, cache_dir=str(tmp_path))
    embeddings = np.asarray(done["teacher_embeddings"])
    assert embeddings.shape == (len(rows), 16)
    np.testing.assert_allclose(teacher.model.model_body.encode(rows["text"][:4]), embeddings[:4], atol=1e-5)
    again = SetFitTeacher(tiny_model_dir, labeled, num_iterations=1, batch_size=8, seed=0)
    cached = add_teacher_embeddings(rows, again, label_names=LABELS, cache_dir=str(tmp_path))
    assert again._model is None  # read back: the body was neither trained nor run
    np.testing.assert_array_equal(np.asarray(cached["teacher_embeddings"]), embeddings)

    # logits first, as the trainer runs them: the body encodes each text once for both columns
    calls = []
    fresh = SetFitTeacher(tiny_model_dir, labeled, num_iterations=1, batch_size=8, seed=0)
    fresh.remember_embeddings = True
    encode = fresh.model.encode
    fresh.model.encode = lambda texts, **kwargs: calls.append(len(texts)) or encode(texts, **kwargs)
    logits = fresh.logits(rows["text"])
    np.testing.assert_allclose(fresh.embeddings(rows["text"]), embeddings, atol=1e-5)
    assert calls == [len(rows)]  # embeddings() encoded nothing more
    fresh.model.encode = encode
    np.testing.assert_allclose(np.exp(logits), fresh.model.predict_proba(rows["text"], as_numpy=True), atol=1e-6)

    classifier = str(tmp_path / "classifier")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, id2label=dict(enumerate(LABELS)), ignore_mismatched_sizes=True)
    model.save_pretrained(classifier)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(classifier)
    from_folder = np.asarray(add_teacher_embeddings(rows, classifier, label_names=LABELS, cache_dir=str(tmp_path))["teacher_embeddings"])
    tokenizer = AutoTokenizer.from_pretrained(classifier)
    inputs = tokenizer(rows["text"][:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.eval().base_model(**inputs)[0]
    mask = inputs["attention_mask"].float()[..., None]
    np.testing.assert_allclose(from_folder[:2], ((hidden * mask).sum(1) / mask.sum(1)).numpy(), atol=1e-5)
    np.testing.assert_allclose(predict_embeddings(model, tokenizer, rows["text"][:2]), from_folder[:2], atol=1e-6)
    with pytest.raises(ValueError, match="no sentence embeddings"):
        add_teacher_embeddings(rows, TeacherEnsemble([teacher, again]), label_names=LABELS, cache_dir=str(tmp_path))


# ---- through the trainer, every architecture ----


@pytest.mark.parametrize("name", list(TINY))
def test_the_trainer_distils_a_setfit_teachers_embeddings_into_every_architecture(name, tmp_path, toy_pool):
    base = save_tiny(name, "pretrained", str(tmp_path / "base"))
    labeled, unlabeled, test = raw_splits(toy_pool)
    args = make_args(tmp_path, num_students=2, teacher_type="setfit", lambda_embedding=1.0, logging_steps=1)
    trainer = MutualDistillationTrainer(model=base, args=args, train_dataset=labeled, unlabeled_dataset=unlabeled, eval_dataset=test)
    assert np.asarray(trainer.train_dataset["teacher_embeddings"]).shape == (len(labeled) + len(unlabeled), 16)
    before = {key: tensor.clone() for key, tensor in trainer.model.trainable_state_dict().items()}
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss_emb" in entry]
    assert logged and all(entry["loss_emb"] > 0 for entry in logged)
    after = trainer.model.trainable_state_dict()
    assert all(not torch.equal(before[key], after[key]) for key in before)
    trainer.save_model()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["training"]["lambda_embedding"] == 1.0
    assert "λ_emb 1.0 (embedding distillation)" in (tmp_path / "out" / "student" / "README.md").read_text()
    assert trainer.train_supervised_baseline() is not None  # the baseline distils nothing, embeddings neither


def test_embedding_distillation_changes_the_students_update(tiny_model_dir, tokenizer, toy_pool, tmp_path):
    """One step with lambda_embedding > 0 moves the adapters differently from the same step without it."""
    labeled, rest = sample_per_class(toy_pool, 4, seed=0)
    rows = training_dataset(labeled, rest.remove_columns("label"))
    rows = rows.add_column("teacher_logits", torch.randn(len(rows), 3, generator=torch.Generator().manual_seed(0)).tolist())
    rows = rows.add_column("teacher_embeddings", torch.randn(len(rows), 7, generator=torch.Generator().manual_seed(1)).tolist())
    train = tokenize(rows, tokenizer, 16)

    def one_step(weight):
        args = make_args(tmp_path / str(weight), num_students=2, max_steps=1, warmup_steps=0, lambda_embedding=weight, eval_strategy="no",
                         text_column="text", label_column="label", learning_rate=0.1)  # fmt: skip
        cohort = StudentCohort.from_pretrained(tiny_model_dir, id2label=dict(enumerate(LABELS)), num_students=2,
                                               lora_config=args.lora_config(), seed=0)  # fmt: skip
        trainer = MutualDistillationTrainer(model=cohort, args=args, train_dataset=train, processing_class=tokenizer)
        trainer.train()
        return trainer.model.trainable_state_dict(), trainer.state.log_history

    without, log_without = one_step(0.0)
    with_term, log_with = one_step(10.0)
    assert "loss_emb" not in log_without[0] and log_with[0]["loss_emb"] > 0
    assert any(not torch.allclose(without[key], with_term[key]) for key in without if "lora_" in key)


# ---- refused before any work ----


def test_a_teacher_without_embeddings_or_a_dataset_without_them_is_refused_first(tiny_model_dir, tiny_lm, tokenizer, toy_pool, tmp_path, monkeypatch):
    labeled, unlabeled, test = raw_splits(toy_pool)
    monkeypatch.setattr(StudentCohort, "from_pretrained", lambda *args, **kwargs: pytest.fail("the cohort was loaded"))
    for settings in ({"teacher_type": "llm", "llm_teacher": tiny_lm, "verbalizers": ["pasta", "goal", "laptop"]},
                     {"teacher_type": "setfit+fine_tune"}):  # fmt: skip
        args = make_args(tmp_path, lambda_embedding=1.0, **settings)
        with pytest.raises(ValueError, match="lambda_embedding=1.0 distils the teacher's sentence embeddings"):
            MutualDistillationTrainer(model=tiny_model_dir, args=args, train_dataset=labeled, unlabeled_dataset=unlabeled)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="lambda_embedding must be >= 0"):
        make_args(tmp_path, lambda_embedding=-1.0)
    labeled_rows, rest = sample_per_class(toy_pool, 4, seed=0)
    train = tokenize(training_dataset(labeled_rows, rest.remove_columns("label")), tokenizer, 16)
    args = make_args(tmp_path, lambda_embedding=1.0, text_column="text", label_column="label", eval_strategy="no")
    cohort = StudentCohort.from_pretrained(tiny_model_dir, id2label=dict(enumerate(LABELS)), num_students=2, seed=0)
    with pytest.raises(ValueError, match="needs its `teacher_embeddings` column"):
        MutualDistillationTrainer(model=cohort, args=args, train_dataset=train, processing_class=tokenizer)
