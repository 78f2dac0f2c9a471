"""The LLM teacher (a causal LM scoring each class's verbalizer after a prompt) and teacher ensembles: the scores
equal a plain forward's, a row is never its own example, calibration, the cache, bad input refused before any
labeling, ensembles' weights, and both through the trainer on every supported architecture."""

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Value
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from nanonet_hf import LLMTeacher, MutualDistillationTrainer, SetFitTeacher, TeacherEnsemble, add_teacher_logits
from nanonet_hf.teachers.llm import calibration_bias, parse_verbalizers
from nanonet_hf.metrics import ensemble_log_probs
from nanonet_hf.teachers import Teacher, fit_mixture_weights

from .conftest import LABELS, make_texts
from .test_pipeline import make_args, raw_splits
from .tiny_models import TINY, save_tiny

VERBALIZERS = {"food": "pasta", "sport": "goal", "tech": "laptop"}  # words of the tiny vocabulary, one token each
LONG_VERBALIZERS = {"food": "pasta bread", "sport": "goal", "tech": "laptop code chip"}  # several tokens


def labeled_rows(per_class=3, seed=0) -> Dataset:
    texts, labels = make_texts(per_class, seed=seed)
    features = Features({"text": Value("string"), "label": ClassLabel(names=LABELS)})
    return Dataset.from_dict({"text": texts, "label": labels}, features=features)


def plain_scores(teacher: LLMTeacher, text: str) -> np.ndarray:
    """The class scores from one unpadded, uncached forward of the whole prompt and each verbalizer."""
    prefix, before, after = teacher._split(teacher._examples_for(text))
    row = teacher.tokenizer(prefix)["input_ids"] + teacher._text_ids(before, text, after)
    scores = []
    for ids in teacher.verbalizer_ids:
        with torch.no_grad():
            log_probs = teacher.model(input_ids=torch.tensor([row + ids])).logits[0].log_softmax(-1)
        scores.append(sum(log_probs[len(row) - 1 + t, token].item() for t, token in enumerate(ids)))
    return torch.tensor(scores).log_softmax(-1).numpy()


@pytest.mark.parametrize("verbalizers", [VERBALIZERS, LONG_VERBALIZERS], ids=["one token", "several tokens"])
@pytest.mark.parametrize("shots", [0, 2])
def test_batched_cached_scores_equal_a_plain_forward(tiny_lm, verbalizers, shots):
    labeled = labeled_rows()
    teacher = LLMTeacher(tiny_lm, labeled, verbalizers=verbalizers, examples_per_class=shots, batch_size=4)
    texts = [*make_texts(2, seed=5)[0], "goal", "pasta pasta pasta bread today was very new and we like this", labeled["text"][0]]
    batched = teacher.class_log_probs(texts)  # left-padded batches of different lengths after a shared prefix
    expected = np.stack([plain_scores(teacher, text) for text in texts])
    np.testing.assert_allclose(batched, expected, atol=1e-4)
    unshared = LLMTeacher(tiny_lm, labeled, verbalizers=verbalizers, examples_per_class=shots, batch_size=4, share_prefix=False)
    np.testing.assert_allclose(unshared.class_log_probs(texts), expected, atol=1e-4)  # whole prompts, left-padded


def test_a_row_is_never_its_own_example(tiny_lm):
    labeled = labeled_rows(per_class=3)
    teacher = LLMTeacher(tiny_lm, labeled, verbalizers=VERBALIZERS, examples_per_class=2)
    shown = teacher._examples_for("an unseen text")
    assert len(shown) == 6 and [label for _, label in shown] == [0, 1, 2, 0, 1, 2]  # classes interleaved
    for text, label in shown:
        own = teacher._examples_for(text)
        assert text not in [t for t, _ in own] and len(own) == 6  # another example of its class stands in
    assert shown[0][0] in teacher._split(shown)[0]  # the examples are in the prompt's shared prefix


def test_calibration_moves_the_mean_prediction_to_the_label_counts_or_fits_the_labels():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 10)
    scores = torch.tensor(rng.normal(size=(30, 3)) + [3.0, 0.0, 0.0]).log_softmax(-1).numpy()  # biased to class 0
    prior = calibration_bias(scores, labels, "prior", 3)
    mean = torch.tensor(scores + prior).softmax(-1).mean(0).numpy()
    np.testing.assert_allclose(mean, [1 / 3] * 3, atol=1e-4)
    fitted = calibration_bias(scores, labels, "fit", 3)

    def nll(bias):
        return torch.nn.functional.cross_entropy(torch.tensor(scores + bias), torch.tensor(labels)).item()

    assert nll(fitted) < nll(np.zeros(3)) and nll(fitted) <= nll(prior) + 1e-6
    np.testing.assert_array_equal(calibration_bias(scores, labels, "none", 3), np.zeros(3))


def test_logits_are_calibrated_reported_and_cached(tiny_lm, tmp_path, monkeypatch):
    labeled = labeled_rows()
    rows = Dataset.from_dict({"text": make_texts(4, seed=3)[0]})
    teacher = LLMTeacher(tiny_lm, labeled, verbalizers=VERBALIZERS, examples_per_class=1)
    first = add_teacher_logits(rows, teacher, label_names=LABELS, cache_dir=str(tmp_path))
    logits = np.asarray(first["teacher_logits"])
    expected = torch.tensor(teacher.class_log_probs(rows["text"]) + teacher.bias).log_softmax(-1).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    np.testing.assert_allclose(np.exp(logits).sum(-1), 1, atol=1e-5)
    report = teacher.report
    assert set(report) == {"labeled_accuracy_uncalibrated", "labeled_accuracy_calibrated", "calibration", "bias"}

    def refuse(*args, **kwargs):
        raise AssertionError("the LM was loaded although its logits are cached")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    again = LLMTeacher(tiny_lm, labeled, verbalizers=VERBALIZERS, examples_per_class=1)
    np.testing.assert_array_equal(np.asarray(add_teacher_logits(rows, again, label_names=LABELS, cache_dir=str(tmp_path))["teacher_logits"]), logits)
    other = LLMTeacher(tiny_lm, labeled, verbalizers=VERBALIZERS, examples_per_class=1, prompt="Text: {text}\n{examples}Topic:")
    assert other.fingerprint != again.fingerprint  # the prompt is part of the key


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"verbalizers": ["pasta", "goal"]}, "2 given .* for 3 classes"),
        ({"verbalizers": {"food": "pasta", "sport": "goal"}}, r"no verbalizer for the class\(es\) \['tech'\]"),
        ({"verbalizers": {"food": "pasta", "sport": "goal", "tech": "Pasta"}}, "stand for several classes"),
        ({"verbalizers": ["food=pasta", "sport=goal", "science=chip"]}, r"unknown label\(s\) \['science'\]"),
        ({"verbalizers": {"food": "pasta", "sport": "goal", "tech": "\u200b"}}, "tokenize to nothing"),
        ({"verbalizers": ["pasta", "zebra", "quokka"]}, "tokenize to the same tokens"),
        ({"prompt": "Classify: {labels}\nAnswer:"}, "no {text} placeholder"),
        ({"examples_per_class": 1, "prompt": "{text} is one of {labels}:"}, "no {examples} placeholder"),
        ({"use_chat_template": True}, "has no chat template"),
        ({"calibration": "platt"}, "calibration must be one of"),
    ],
)
def test_bad_llm_teacher_settings_are_refused_before_any_labeling(tiny_lm, settings, message, monkeypatch):
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("the LM was loaded"))
    with pytest.raises(ValueError, match=message):
        LLMTeacher(tiny_lm, labeled_rows(), **{"verbalizers": VERBALIZERS, **settings})


def test_an_lm_without_a_tokenizer_is_refused(tiny_lm, tmp_path):
    bare = tmp_path / "bare-lm"
    shutil.copytree(tiny_lm, bare, ignore=shutil.ignore_patterns("tokenizer*", "vocab*", "special_tokens*"))
    with pytest.raises(ValueError, match="tokenizer"):
        LLMTeacher(str(bare), labeled_rows(), verbalizers=VERBALIZERS)


def test_verbalizers_default_to_the_label_names_and_may_be_given_in_label_order():
    assert parse_verbalizers(None, ["NEW_YORK", "Paris"]) == ["new york", "paris"]
    assert parse_verbalizers(["a b", "c"], ["x", "y"]) == ["a b", "c"]
    assert parse_verbalizers(["y=c", "x=a b"], ["x", "y"]) == ["a b", "c"]


class FixedTeacher(Teacher):
    """A teacher that predicts fixed log-probabilities per text and records the rows it was made from."""

    default_temperature = 1.0
    label_names = LABELS
    name = "fixed"

    def __init__(self, table: dict, trained_on=()):
        self.table, self.trained_on = table, list(trained_on)
        # by content (the logits cache outlives a test: an id() could be reused by another table)
        content = [[text, np.round(np.asarray(row, dtype=float), 6).tolist()] for text, row in sorted(table.items())]
        self.fingerprint = "fixed-" + hashlib.sha256(json.dumps([content, self.trained_on]).encode()).hexdigest()[:16]

    def with_rows(self, labeled):
        return FixedTeacher(self.table, labeled["text"])

    def logits(self, texts, batch_size=None):
        assert not set(texts) & set(self.trained_on), "a member predicted rows it was trained on"
        return np.stack([self.table[text] for text in texts])


def test_ensemble_is_the_mean_of_tempered_members_and_fitted_weights_favour_the_better_one(tmp_path):
    labeled = labeled_rows(per_class=6)
    labels = np.asarray(labeled["label"])
    good = {t: np.log(np.where(np.arange(3) == y, 0.8, 0.1)) for t, y in zip(labeled["text"], labels)}
    bad = {t: np.log(np.where(np.arange(3) == (y + 1) % 3, 0.8, 0.1)) for t, y in zip(labeled["text"], labels)}
    ensemble = TeacherEnsemble([FixedTeacher(good), FixedTeacher(bad)])
    texts = list(labeled["text"])
    members = [np.stack([good[t] for t in texts]), np.stack([bad[t] for t in texts])]
    np.testing.assert_allclose(ensemble.combine(members), ensemble_log_probs(np.stack(members, 1)), atol=1e-6)
    rows = Dataset.from_dict({"text": texts})
    combined = add_teacher_logits(rows, ensemble, label_names=LABELS, cache_dir=str(tmp_path))
    np.testing.assert_allclose(np.asarray(combined["teacher_logits"]), ensemble.combine(members), atol=1e-6)

    fitted = TeacherEnsemble([FixedTeacher(good), FixedTeacher(bad)], weights="fit", labeled=labeled, folds=3)
    assert fitted.weights[0] > 0.95  # cross-fitted: every row predicted by members made without it (asserted above)
    assert fitted.fingerprint != ensemble.fingerprint
    weights = fit_mixture_weights(np.stack(members, 1), labels)
    assert weights.sum() == pytest.approx(1) and weights[0] > weights[1]

    # scored on the labeled rows before it teaches: the fitted ensemble held out, each member on its own
    from nanonet_hf.teachers.calibration import score_teacher

    found = score_teacher(fitted, labeled, lambda teacher: teacher.logits(texts))
    assert found["how"] == "held out: 3-fold cross-fitting" and found["accuracy"] == 1.0 and found["beats_majority"]
    assert found["members"] == [{"name": "fixed", "accuracy": 1.0}, {"name": "fixed", "accuracy": 0.0}]
    with pytest.raises(ValueError, match=r"The teacher fixed is right on 0.0% of the 18 labeled rows \(these rows\)"):
        score_teacher(FixedTeacher(bad), labeled, lambda teacher: teacher.logits(texts))


def test_bad_ensembles_are_refused(tiny_model_dir, tmp_path):
    labeled = labeled_rows()
    other = labeled.cast_column("label", ClassLabel(names=["a", "b", "c"]))
    setfit = SetFitTeacher(tiny_model_dir, labeled, num_iterations=1)
    with pytest.raises(ValueError, match="predict different labels"):
        TeacherEnsemble([setfit, SetFitTeacher(tiny_model_dir, other, num_iterations=1)])
    with pytest.raises(ValueError, match="at least two"):
        TeacherEnsemble([setfit])
    with pytest.raises(ValueError, match="one number per teacher|give 2 non-negative"):
        TeacherEnsemble([setfit, setfit], weights=[1.0])
    classifier = str(tmp_path / "classifier")
    AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, id2label=dict(enumerate(LABELS)), ignore_mismatched_sizes=True).save_pretrained(classifier)
    with pytest.raises(ValueError, match="cannot be"):
        TeacherEnsemble([setfit, classifier], weights="fit", labeled=labeled)
    with pytest.raises(ValueError, match=r"3 folds needs >= 3 labeled rows of every class; class '\w+' has 2"):
        TeacherEnsemble([setfit, setfit], weights="fit", labeled=labeled_rows(per_class=2))


@pytest.mark.parametrize("name", list(TINY))
def test_an_llm_and_setfit_ensemble_teaches_every_architecture(name, tmp_path, toy_pool, tiny_lm):
    base = save_tiny(name, "pretrained", str(tmp_path / "base"))
    labeled, unlabeled, test = raw_splits(toy_pool)
    args = make_args(tmp_path, num_students=1, teacher_type="setfit+llm", llm_teacher=tiny_lm,
                     verbalizers=["food=pasta", "sport=goal", "tech=laptop"], llm_examples_per_class=1)  # fmt: skip
    trainer = MutualDistillationTrainer(model=base, args=args, train_dataset=labeled, unlabeled_dataset=unlabeled, eval_dataset=test)
    assert isinstance(trainer.teacher, TeacherEnsemble) and trainer.teacher_temperature == 1.0
    trainer.train()
    trainer.save_model()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(results["teachers"]) == trainer.teacher.names and len(results["teachers"]) == 2
    assert results["teacher_name_or_path"].startswith("SetFit (1 pair iterations)") and " + LLM " in results["teacher_name_or_path"]
    assert results["llm_calibration"]["calibration"] == "prior"
    assert [member["name"] for member in results["teacher_labeled"]["members"]] == trainer.teacher.names
    card = (tmp_path / "out" / "student" / "README.md").read_text()
    assert "teacher member: LLM" in card and "teacher member: SetFit" in card


def test_the_recipe_runs_an_llm_teacher_and_refuses_bad_verbalizers_first(tiny_model_dir, tiny_lm, tmp_path, monkeypatch):
    from .conftest import load_script, write_toy_files

    recipe = load_script("recipes", "train.py")
    pool, test = write_toy_files(tmp_path)
    argv = [
        "--model_name_or_path", tiny_model_dir, "--labeled_file", pool, "--eval_file", test, "--labels_per_class", "4",
        "--teacher_type", "llm", "--teacher_name_or_path", tiny_lm, "--verbalizers", "pasta", "goal", "laptop",
        "--student_layers", "3", "2",
        "--max_steps", "2", "--per_device_train_batch_size", "8", "--max_length", "16", "--report_to", "none",
        "--output_dir", str(tmp_path / "run"), "--supervised_baseline", "false", "--allow_weak_teacher", "true",
        "--overwrite_output_dir", "true",  # the refusals below reuse these flags
    ]  # fmt: skip
    results = recipe.main(*recipe.parse_args(argv)).to_dict()
    assert results["teacher_name_or_path"].startswith("LLM tiny-llama") and "(1-shot, prior calibration)" in results["teacher_name_or_path"]
    assert 0 <= results["teacher"]["accuracy"] <= 1 and results["teachers"] is None
    assert set(results["llm_calibration"]) >= {"labeled_accuracy_uncalibrated", "labeled_accuracy_calibrated"}
    # teacher_type auto: a causal LM checkpoint is an LLM teacher
    auto = [value if value != "llm" else "auto" for value in argv]
    auto[auto.index(str(tmp_path / "run"))] = str(tmp_path / "auto")
    assert recipe.main(*recipe.parse_args(auto)).teacher_name_or_path.startswith("LLM tiny-llama")
    import nanonet_hf.mutual_distillation_trainer as trainer_module

    monkeypatch.setattr(trainer_module.StudentCohort, "from_pretrained", lambda *a, **k: pytest.fail("work began"))
    with pytest.raises(ValueError, match="2 given"):
        recipe.main(*recipe.parse_args([*argv[: argv.index("pasta")], "pasta", "goal", *argv[argv.index("laptop") + 1 :]]))


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["trec6", "rotten_tomatoes"])
def test_smollm2_teaches_a_minilm_student_on_the_builtin_datasets(dataset, tmp_path):
    """The packaged SmolLM2-135M-Instruct (GGUF) labels a small pool and 100 test rows; its accuracy is printed as it
    is (the benchmark has the full figures) and must beat the majority class after calibration."""
    from nanonet_hf import MutualDistillationConfig, prepare_data
    from nanonet_hf.data import BUILTIN_VERBALIZERS

    data = prepare_data(dataset=dataset, labels_per_class=10, max_unlabeled=64, seed=0)
    test = data.test.select(range(100))
    args = MutualDistillationConfig(
        output_dir=str(tmp_path / "out"), teacher_type="llm", verbalizers=BUILTIN_VERBALIZERS[dataset], max_steps=10,
        eval_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, selection_rows=64,
    )  # fmt: skip
    trainer = MutualDistillationTrainer(
        model="sentence-transformers/all-MiniLM-L6-v2", args=args, train_dataset=data.labeled,
        unlabeled_dataset=data.unlabeled, eval_dataset=test,
    )  # fmt: skip
    assert isinstance(trainer.teacher, LLMTeacher) and trainer.teacher.gguf_file.endswith(".gguf")
    trainer.train()
    results = trainer.results().to_dict()
    report = results["llm_calibration"]
    print(f"{dataset}: SmolLM2-135M 1-shot on the labeled rows {report['labeled_accuracy_uncalibrated']:.3f} -> "
          f"{report['labeled_accuracy_calibrated']:.3f} calibrated; 100 test rows {results['teacher']['accuracy']:.3f}")
    majority = np.bincount(np.asarray(test["label"])).max() / len(test)
    assert results["teacher"]["accuracy"] > majority
    assert results["students"][0]["accuracy"] > 0


@pytest.mark.slow
def test_the_throughput_benchmark_times_shared_and_whole_prompts_that_agree():
    from .conftest import load_script

    result = load_script("benchmarks", "llm_teacher_speed.py").main(["--texts", "16", "--batch_sizes", "8", "--shots", "1"])
    (run,) = result["runs"]
    assert run["texts_per_s_shared_prefix"] > 0 and run["texts_per_s_whole_prompts"] > 0
    assert run["max_score_difference"] < 1e-3 and run["prefix_tokens"] > run["row_tokens"]


def test_ensemble_weights_from_the_config_are_fitted_or_checked_before_any_work(tmp_path, toy_pool, tiny_model_dir, tiny_lm, monkeypatch):
    labeled, unlabeled, test = raw_splits(toy_pool)
    settings = dict(num_students=1, teacher_type="setfit+llm", llm_teacher=tiny_lm, llm_examples_per_class=0,
                    verbalizers=["food=pasta", "sport=goal", "tech=laptop"])  # fmt: skip
    trainer = MutualDistillationTrainer(model=tiny_model_dir, args=make_args(tmp_path, teacher_ensemble_weights="fit", **settings),
                                        train_dataset=labeled, unlabeled_dataset=unlabeled, eval_dataset=test)  # fmt: skip
    weights = trainer.teacher.weights  # cross-fitted on the 12 labeled rows (3 folds): SetFit retrained on each
    assert weights.shape == (2,) and weights.sum() == pytest.approx(1) and (weights >= 0).all()
    import nanonet_hf.mutual_distillation_trainer as trainer_module

    monkeypatch.setattr(trainer_module.StudentCohort, "from_pretrained", lambda *a, **k: pytest.fail("work began"))
    with pytest.raises(ValueError, match=r"give 3 weights for the 2 teachers"):
        MutualDistillationTrainer(model=tiny_model_dir, args=make_args(tmp_path, teacher_ensemble_weights="1,2,3", **settings),
                                  train_dataset=labeled, unlabeled_dataset=unlabeled)  # fmt: skip
    with pytest.raises(ValueError, match="builds every member itself"):
        MutualDistillationTrainer(model=tiny_model_dir, teacher_model=tiny_lm, args=make_args(tmp_path, **settings),
                                  train_dataset=labeled, unlabeled_dataset=unlabeled)  # fmt: skip
    with pytest.raises(ValueError, match="teacher_type must be"):
        make_args(tmp_path, teacher_type="setfit+setfit")
