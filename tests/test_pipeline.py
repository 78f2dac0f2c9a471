"""The trainer owns the pipeline: raw labeled and unlabeled rows in (any column names), the teacher trained and its
logits cached inside, the chosen student saved as a plain transformers model with its card, pushed to a Hub.
Every supported architecture, from the pre-training checkpoint users download."""

import json
import logging
import os

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Value
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification

from nanonet_hf import MutualDistillationConfig, MutualDistillationTrainer, StudentCohort
from nanonet_hf.data import sample_per_class, tokenize, training_dataset
from nanonet_hf.inference import predict_logits
from nanonet_hf.metrics import agreement_choice, ensemble_log_probs

from .conftest import LABELS, make_texts
from .tiny_models import TINY, save_tiny

TOKEN = "hf_nanonetTestToken0123456789abcdef"


def raw_splits(toy_pool):
    """(labeled, unlabeled, test) as a user has them: columns `sentence` and `category` (class names as strings)."""
    labeled, rest = sample_per_class(toy_pool, 4, seed=0)

    def as_user_rows(rows):
        return Dataset.from_dict({"sentence": rows["text"], "category": [LABELS[y] for y in rows["label"]]})

    return as_user_rows(labeled), Dataset.from_dict({"sentence": rest["text"][:30]}), as_user_rows(rest)


def make_args(tmp_path, **overrides) -> MutualDistillationConfig:
    settings = dict(
        output_dir=str(tmp_path / "out"), text_column="sentence", label_column="category", num_students=2,
        max_steps=3, per_device_train_batch_size=8, setfit_iterations=1, max_length=16, learning_rate=0.01,
        eval_strategy="steps", eval_steps=3, selection_rows=16, report_to="none", disable_tqdm=True,
        student_layers=None, setfit_body=None,  # the tiny 3-layer models: every layer, SetFit on the tiny base
        allow_weak_teacher=True,  # a random tiny model is no teacher; the refusal has its own tests (test_bad_inputs)
    )  # fmt: skip
    return MutualDistillationConfig(**{**settings, **overrides})


@pytest.mark.parametrize("name", list(TINY))
def test_raw_rows_in_the_chosen_student_and_its_card_out(name, tmp_path, toy_pool):
    base = save_tiny(name, "pretrained", str(tmp_path / "base"))
    labeled, unlabeled, test = raw_splits(toy_pool)
    args = make_args(tmp_path)
    trainer = MutualDistillationTrainer(
        model=base, args=args, train_dataset=labeled, unlabeled_dataset=unlabeled, eval_dataset=test
    )
    trainer.train()
    trainer.save_model()
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    assert results["label_budget"] == {"labels_per_class": 4, "labeled": 12, "unlabeled": 30, "generated": 0, "test": len(test)}
    assert results["label_names"] == sorted(LABELS) and results["cohort"]["num_students"] == 2
    assert results["teacher"] is not None and results["teacher_name_or_path"].startswith("SetFit (1 pair iterations) on")
    assert results["selection"] == "agreement with the teacher on unlabeled rows"
    assert (out / "student" / "README.md").is_file()

    # the saved student is the chosen one: a plain transformers model with its logits, and the eval metrics agree
    cohort = trainer.accelerator.unwrap_model(trainer.model)
    tokenizer = AutoTokenizer.from_pretrained(out / "student")
    student = AutoModelForSequenceClassification.from_pretrained(out / "student")
    texts = list(test["sentence"])
    expected = predict_logits(cohort, tokenizer, texts, max_length=16)[:, results["chosen_student"]]
    np.testing.assert_allclose(predict_logits(student, tokenizer, texts, max_length=16), expected, atol=1e-5)
    labels = np.asarray([sorted(LABELS).index(c) for c in test["category"]])
    accuracy = float((expected.argmax(-1) == labels).mean())
    assert results["students"][results["chosen_student"]]["accuracy"] == pytest.approx(accuracy)


def test_selection_is_agreement_with_the_teacher_or_labeled_accuracy(tiny_model_dir, tmp_path, toy_pool):
    labeled, unlabeled, test = raw_splits(toy_pool)
    trainer = MutualDistillationTrainer(
        model=tiny_model_dir, args=make_args(tmp_path, num_students=3), train_dataset=labeled,
        unlabeled_dataset=unlabeled, eval_dataset=test,
    )  # fmt: skip
    trainer.train()
    cohort, tokenizer = trainer.model, trainer.processing_class
    rows = list(unlabeled["sentence"][:16])
    reference = trainer.teacher_logits(Dataset.from_dict({"text": rows})).argmax(-1)
    logits = predict_logits(cohort, tokenizer, rows, max_length=16)
    assert trainer.select_student() == agreement_choice(logits, reference)
    assert trainer.card_data.selection == "agreement with the teacher on unlabeled rows"
    # the other rule compares the students with their own ensemble (the mean of their probabilities)
    assert trainer.select_student(rule="ensemble") == agreement_choice(logits, ensemble_log_probs(logits).argmax(-1))
    assert trainer.card_data.selection == "agreement with the students' ensemble on unlabeled rows"
    with pytest.raises(ValueError, match="student_selection must be one of .*'best'"):
        trainer.select_student(rule="best")

    only_labeled = MutualDistillationTrainer(
        model=tiny_model_dir, args=make_args(tmp_path / "b", num_students=3), train_dataset=labeled, eval_dataset=test
    )
    only_labeled.train()
    texts, labels = list(labeled["sentence"]), [sorted(LABELS).index(c) for c in labeled["category"]]
    logits = predict_logits(only_labeled.model, tokenizer, texts, max_length=16)
    assert only_labeled.select_student() == agreement_choice(logits, np.asarray(labels))
    assert only_labeled.card_data.selection == "accuracy on the labeled rows"


def test_supervised_baseline_is_one_call_and_lands_in_the_card(tiny_model_dir, tmp_path, toy_pool):
    labeled, unlabeled, test = raw_splits(toy_pool)
    trainer = MutualDistillationTrainer(
        model=tiny_model_dir, args=make_args(tmp_path), train_dataset=labeled, unlabeled_dataset=unlabeled,
        eval_dataset=test,
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="call train"):
        trainer.train_supervised_baseline()
    trainer.train()
    baseline = trainer.train_supervised_baseline()
    assert set(baseline) == {"accuracy", "macro_f1", "layers"} and baseline["layers"] == 3
    trainer.save_model()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["supervised_only"] == baseline and "supervised_train_s" in results["wall_time_s"]
    assert "supervised-only student" in (tmp_path / "out" / "student" / "README.md").read_text()


def test_the_supervised_baseline_takes_the_chosen_students_layers(tiny_model_dir, tmp_path, toy_pool):
    labeled, unlabeled, test = raw_splits(toy_pool)
    args = make_args(tmp_path, student_layers=[3, "0,2"], adapter_layers="1")  # a 3-layer and a 2-layer student
    trainer = MutualDistillationTrainer(
        model=tiny_model_dir, args=args, train_dataset=labeled, unlabeled_dataset=unlabeled, eval_dataset=test
    )
    trainer.train()
    trainer.chosen_student = 1
    built = []
    original = StudentCohort.from_pretrained

    def spy(*args, **kwargs):
        built.append(kwargs)
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StudentCohort, "from_pretrained", spy)
        baseline = trainer.train_supervised_baseline()
    assert baseline["layers"] == 2
    # one student of the chosen student's layers (0 and 2), LoRA on its top layer as in the cohort
    assert built[0]["num_students"] == 1 and built[0]["student_layers"] == [[0, 2]] and built[0]["adapter_layers"] == "1"


def test_a_setfit_teacher_from_the_config(tmp_path, toy_pool, tiny_model_dir):
    labeled, unlabeled, test = raw_splits(toy_pool)
    args = make_args(tmp_path, teacher_type="setfit", setfit_iterations=1)
    trainer = MutualDistillationTrainer(
        model=tiny_model_dir, args=args, train_dataset=labeled, unlabeled_dataset=unlabeled, eval_dataset=test
    )
    assert trainer.card_data.teacher_name.startswith("SetFit (1 pair iterations)")
    assert len(trainer.train_dataset["teacher_logits"][0]) == len(LABELS)
    assert not (tmp_path / "out" / "teacher").exists()  # SetFit stays in memory


def test_teacher_type_auto_tells_a_classifier_from_a_body(tmp_path, toy_pool, tiny_model_dir):
    """The default teacher_type "auto": no teacher or a body (no classification head in its config) gets SetFit; a
    `...ForSequenceClassification` folder is the teacher as it is; an explicit teacher_type wins, and
    teacher_temperature follows the kind (fitted on the labeled rows for SetFit unless set, 1 for a classifier)."""
    labeled, unlabeled, _ = raw_splits(toy_pool)
    classifier = tmp_path / "classifier"
    config = BertConfig.from_pretrained(tiny_model_dir, id2label=dict(enumerate(sorted(LABELS))))
    BertForSequenceClassification(config).save_pretrained(classifier)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(classifier)
    body = save_tiny("bert", "pretrained", str(tmp_path / "body"))  # BertForPreTraining: no classification head
    for teacher, overrides, kind, temperature in (
        (None, {}, "setfit", "fit"),
        (body, {}, "setfit", "fit"),
        (body, {"teacher_temperature": 0.25}, "setfit", 0.25),
        (str(classifier), {}, "fine_tune", 1.0),
        (str(classifier), {"teacher_temperature": 0.5}, "fine_tune", 0.5),
        (None, {"teacher_type": "fine_tune", "teacher_num_train_epochs": 1}, "fine_tune", 1.0),
    ):
        trainer = MutualDistillationTrainer(
            model=tiny_model_dir, teacher_model=teacher, args=make_args(tmp_path / kind, eval_strategy="no", **overrides),
            train_dataset=labeled, unlabeled_dataset=unlabeled,
        )  # fmt: skip
        if temperature == "fit":  # fitted on the 3 folds of the 12 labeled rows
            temperature = trainer.teacher_calibration["temperature"]
        assert (trainer.teacher_type, trainer.teacher_temperature) == (kind, temperature), (teacher, overrides)
        assert trainer.card_data.teacher_name.startswith("SetFit") == (kind == "setfit")


def test_push_to_hub_publishes_the_student(tiny_model_dir, tmp_path, toy_pool, hub):
    labeled, unlabeled, test = raw_splits(toy_pool)
    args = make_args(tmp_path, hub_model_id="alice/pipeline-student", hub_token=TOKEN)
    trainer = MutualDistillationTrainer(
        model=tiny_model_dir, args=args, train_dataset=labeled, unlabeled_dataset=unlabeled, eval_dataset=test
    )
    trainer.train()
    result = trainer.push_to_hub(endpoint=hub.endpoint)  # saves first: save_model was not called
    assert result.commit_url.startswith(f"{hub.endpoint}/alice/pipeline-student/commit/")
    repo = hub.hub.repos[("model", "alice/pipeline-student")]
    assert {"README.md", "config.json", "model.safetensors"} <= set(hub.hub.files(repo, repo.refs["main"]))
    assert (tmp_path / "out" / "student" / "config.json").is_file()


def test_push_to_hub_flag_publishes_the_student_and_never_a_cohort_checkpoint(tiny_model_dir, tmp_path, toy_pool, hub, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.endpoint)  # what HF_ENDPOINT would set
    labeled, unlabeled, test = raw_splits(toy_pool)
    args = make_args(tmp_path, push_to_hub=True, hub_model_id="alice/flag-student", hub_token=TOKEN, save_strategy="steps",
                     save_steps=2)  # fmt: skip
    trainer = MutualDistillationTrainer(
        model=tiny_model_dir, args=args, train_dataset=labeled, unlabeled_dataset=unlabeled, eval_dataset=test
    )
    trainer.train()
    assert (tmp_path / "out" / "checkpoint-2").is_dir() and not hub.hub.repos  # the checkpoint stayed local
    trainer.save_model()
    repo = hub.hub.repos[("model", "alice/flag-student")]
    files = set(hub.hub.files(repo, repo.refs["main"]))
    assert {"README.md", "config.json", "model.safetensors"} <= files and not any("checkpoint" in f for f in files)


# ---- bad input: a clear error before any work, nothing written ----


def labeled_ids(labels: list[int], names: list[str] | None = None) -> Dataset:
    texts, _ = make_texts(len(labels), seed=3)
    if names is None:
        return Dataset.from_dict({"text": texts[: len(labels)], "label": labels})
    features = Features({"text": Value("string"), "label": ClassLabel(names=names)})
    return Dataset.from_dict({"text": texts[: len(labels)], "label": labels}, features=features)


@pytest.mark.parametrize(
    "train, message",
    [
        (labeled_ids([0, 1, 2, 0, 1, 2, 9]), r"6 of 10 classes have no labeled example: \['3', '4', '5', '6', '7', '8'\]"),
        (labeled_ids([0, 1, 0, 1], names=["a", "b", "c"]), r"1 of 3 classes have no labeled example: \['c'\]"),
        (labeled_ids([0, 1]).rename_column("text", "body"), r"no column 'text' \(set text_column\); its columns are \['body', 'label'\]"),
        (labeled_ids([0, 1]).rename_column("label", "y"), r"no column 'label' \(set label_column\); its columns are \['text', 'y'\]"),
    ],
)  # fmt: skip
def test_bad_training_rows_are_refused_before_any_work(train, message, tiny_model_dir, tmp_path):
    args = MutualDistillationConfig(output_dir=str(tmp_path / "out"), report_to="none")
    with pytest.raises(ValueError, match=message):
        MutualDistillationTrainer(model=tiny_model_dir, args=args, train_dataset=train)
    assert not (tmp_path / "out").exists()


def test_unlabeled_rows_with_labels_warn_and_the_labels_stay_out(tiny_model_dir, tmp_path, toy_pool, caplog):
    labeled, unlabeled, _ = raw_splits(toy_pool)
    leaky = unlabeled.add_column("category", ["food"] * len(unlabeled))
    with caplog.at_level(logging.WARNING, logger="nanonet_hf.data"):
        trainer = MutualDistillationTrainer(
            model=tiny_model_dir, args=make_args(tmp_path, eval_strategy="no"), train_dataset=labeled, unlabeled_dataset=leaky
        )
    assert "unlabeled_dataset has a 'category' column: it is ignored" in caplog.text
    labels = np.asarray(trainer.train_dataset["labels"])
    assert (labels[12:] == -100).all() and len(labels) == 12 + len(unlabeled)


def test_a_cohort_that_disagrees_with_the_config_is_refused(tiny_model_dir, tmp_path, toy_pool):
    labeled, unlabeled, _ = raw_splits(toy_pool)
    id2label = dict(enumerate(sorted(LABELS)))
    for built, message in (
        ({"num_students": 3}, "num_students: the cohort has 3, args say 2"),
        ({"num_students": 2, "student_layers": 2}, r"student_layers: the cohort's students keep layers \[\[0, 1\], \[0, 1\]\], args give \[\[0, 1, 2\], \[0, 1, 2\]\]"),
    ):  # fmt: skip
        cohort = StudentCohort.from_pretrained(tiny_model_dir, id2label=id2label, **built)
        with pytest.raises(ValueError, match=message):
            MutualDistillationTrainer(model=cohort, args=make_args(tmp_path), train_dataset=labeled, unlabeled_dataset=unlabeled)
    assert not (tmp_path / "out").exists()


def test_a_teacher_with_other_labels_is_refused_before_training(tiny_model_dir, tmp_path, toy_pool):
    labeled, unlabeled, _ = raw_splits(toy_pool)
    teacher_dir = tmp_path / "teacher"
    config = BertConfig.from_pretrained(tiny_model_dir, id2label={0: "yes", 1: "no"})
    BertForSequenceClassification(config).save_pretrained(teacher_dir)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(teacher_dir)
    with pytest.raises(ValueError, match=r"predicts labels \['yes', 'no'\], but the data's labels are \['food', 'sport', 'tech'\]"):
        MutualDistillationTrainer(
            model=tiny_model_dir, teacher_model=str(teacher_dir), args=make_args(tmp_path), train_dataset=labeled,
            unlabeled_dataset=unlabeled,
        )  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_save_model_before_train_and_unlabeled_rows_beside_tokenized_ones_are_refused(tiny_model_dir, tmp_path, toy_pool, tokenizer):
    labeled, unlabeled, _ = raw_splits(toy_pool)
    trainer = MutualDistillationTrainer(
        model=tiny_model_dir, args=make_args(tmp_path, eval_strategy="no"), train_dataset=labeled, unlabeled_dataset=unlabeled
    )
    with pytest.raises(RuntimeError, match=r"save_model\(\) before train\(\)"):
        trainer.save_model()
    assert not (tmp_path / "out" / "student").exists()

    rows, _ = sample_per_class(toy_pool, 4, seed=0)
    ready = tokenize(training_dataset(rows, rows.remove_columns("label")), tokenizer, 16)
    with pytest.raises(ValueError, match="unlabeled_dataset goes with raw labeled rows"):
        MutualDistillationTrainer(model=tiny_model_dir, args=make_args(tmp_path, eval_strategy="no"), train_dataset=ready, unlabeled_dataset=unlabeled)


def test_config_defaults_are_the_recommended_settings():
    """A run on a user's own rows takes the default run's settings: a few hundred steps, not 3 epochs of the pool."""
    import yaml

    args = MutualDistillationConfig(output_dir="x")
    with open(os.path.join(os.path.dirname(__file__), "..", "recipes", "configs", "trec6.yaml")) as handle:
        default_run = yaml.safe_load(handle)
    for key in ("num_students", "lora_r", "lora_alpha", "temperature", "lambda_kd", "lambda_mut", "mutual_loss",
                "rampup_ratio", "per_device_train_batch_size", "unlabeled_ratio",
                "train_sampling_strategy", "max_steps", "learning_rate", "warmup_steps", "logging_steps", "seed"):  # fmt: skip
        assert getattr(args, key) == default_run[key], key
    assert args.max_length is None and "max_length" not in default_run  # chosen from the data, in both
