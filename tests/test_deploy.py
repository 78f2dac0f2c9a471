"""The deployment tiers (nanonet_hf/deploy): every architecture's student as ONNX fp32 and int8, checked against
PyTorch; the static Model2Vec student; the trainer and the recipe writing them with `export_formats`, the card's
tiers and snippets, the Space serving a faster tier; bad input refused before any work."""

import json
import os
import re

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from nanonet_hf import MutualDistillationConfig, MutualDistillationTrainer
from nanonet_hf.deploy import onnx_export
from nanonet_hf.deploy.formats import check_export_formats
from nanonet_hf.deploy.onnx_export import OnnxClassifier, OnnxExportError, export_onnx
from nanonet_hf.deploy.static_student import train_static_student
from nanonet_hf.inference import predict_logits

from .conftest import LABELS, load_script, make_texts, write_toy_files
from .tiny_models import TINY, save_tiny

ARCHITECTURES = sorted(TINY)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return make_texts(20, seed=1)[0]


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_architecture_exports_to_onnx_that_gives_the_pytorch_logits(name, texts, tmp_path):
    folder = save_tiny(name, "classifier", str(tmp_path / name))
    record = export_onnx(folder, texts, int8=True, max_length=16)
    assert sorted(os.listdir(os.path.join(folder, "onnx"))) == ["model.onnx", "model_quantized.onnx"]
    assert record["check_rows"] == len(texts) and record["fp32_max_abs_diff"] <= 1e-4
    assert record["int8_agreement"] >= onnx_export.MIN_INT8_AGREEMENT

    # at other batch sizes and lengths than the exporter traced, through plain onnxruntime with the tokenizer
    model, tokenizer = AutoModelForSequenceClassification.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    others = ["goal", *[" ".join(texts[i : i + 4]) for i in range(0, 20, 4)]]
    graph = OnnxClassifier(os.path.join(folder, "onnx", "model.onnx"), tokenizer, max_length=16)
    assert {item.name for item in graph.session.get_inputs()} == set(tokenizer.model_input_names)
    reference = predict_logits(model, tokenizer, others, max_length=16)
    np.testing.assert_allclose(graph.logits(others, batch_size=4), reference, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(graph(["goal"]), reference[:1], atol=1e-4, rtol=1e-4)  # a batch of one


def _perturbed_export(export):
    def wrong(model, tokenizer, path, texts):
        with torch.no_grad():
            next(model.classifier.parameters() if hasattr(model, "classifier") else model.parameters()).add_(0.5)
        export(model, tokenizer, path, texts)

    return wrong


def test_a_graph_that_does_not_give_the_pytorch_logits_is_refused_and_not_written(texts, tmp_path, monkeypatch):
    folder = save_tiny("bert", "classifier", str(tmp_path / "bert"))
    monkeypatch.setattr(onnx_export, "_export_graph", _perturbed_export(onnx_export._export_graph))
    with pytest.raises(OnnxExportError, match=r"BertForSequenceClassification \(model_type 'bert'\) gives logits up to .* not written"):
        export_onnx(folder, texts, int8=False, max_length=16)
    assert not os.path.exists(os.path.join(folder, "onnx")) and not [name for name in os.listdir(folder) if name.startswith(".")]


def test_an_int8_model_that_disagrees_with_pytorch_is_refused(texts, tmp_path, monkeypatch):
    folder = save_tiny("roberta", "classifier", str(tmp_path / "roberta"))
    monkeypatch.setattr(onnx_export, "MIN_INT8_AGREEMENT", 1.01)
    with pytest.raises(OnnxExportError, match=r"int8 ONNX model of RobertaForSequenceClassification .* Export without 'onnx-int8'"):
        export_onnx(folder, texts, int8=True, max_length=16)
    assert not os.path.exists(os.path.join(folder, "onnx"))


def test_an_architecture_the_exporter_cannot_take_is_named(texts, tmp_path, monkeypatch):
    folder = save_tiny("deberta-v3", "classifier", str(tmp_path / "deberta"))

    def fails(*args, **kwargs):
        raise torch.export.UserError(torch.export.UserErrorType.UNSUPPORTED, "data-dependent control flow")

    monkeypatch.setattr(torch.onnx, "export", fails)
    with pytest.raises(OnnxExportError, match=r"cannot take DebertaV2ForSequenceClassification \(model_type 'deberta-v2'\)"):
        export_onnx(folder, texts, int8=False, max_length=16)
    assert not os.path.exists(os.path.join(folder, "onnx"))


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_architecture_gives_a_static_student_that_loads_with_model2vec(name, tmp_path):
    from model2vec.inference import StaticModelPipeline

    folder = save_tiny(name, "classifier", str(tmp_path / name))
    texts, labels = make_texts(30, seed=1)
    targets = np.eye(len(LABELS), dtype=np.float32)[labels] * 0.8 + 0.2 / len(LABELS)  # soft, the right class first
    held_out = np.arange(len(texts)) % 10 == 0
    pipeline, record = train_static_student(folder, texts, targets, LABELS, held_out=held_out, max_length=16)
    assert record["held_out_rows"] == held_out.sum() and 1 <= record["best_epoch"] <= record["epochs"]
    pipeline.save_pretrained(str(tmp_path / "static"))
    loaded = StaticModelPipeline.from_pretrained(str(tmp_path / "static"))
    assert list(loaded.classes_) == LABELS
    probabilities = loaded.predict_proba(texts)
    np.testing.assert_allclose(probabilities, pipeline.predict_proba(texts), atol=1e-6)
    assert (probabilities.argmax(-1) == np.asarray(labels)).mean() >= 0.8  # the toy classes are separable by their words


# ---- the trainer and the recipe ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiers_run(tmp_path_factory) -> str:
    """A recipe run on the tiny DeBERTa-v3 (relative positions, token type ids) with every format."""
    recipe = load_script("recipes", "train.py")
    folder = tmp_path_factory.mktemp("tiers")
    model = save_tiny("deberta-v3", "classifier", str(folder / "model"))
    pool, test = write_toy_files(folder)
    run = folder / "out"
    argv = [
        "--model_name_or_path", model, "--labeled_file", pool, "--eval_file", test, "--labels_per_class", "4",
        "--num_students", "2", "--student_layers", "3", "2", "--max_steps", "4", "--per_device_train_batch_size", "8",
        "--learning_rate", "0.003", "--max_length", "16", "--report_to", "none", "--output_dir", str(run),
        "--setfit_body", "null", "--teacher_num_train_epochs", "1", "--speed_repeats", "2", "--allow_weak_teacher", "true",
        "--export_formats", "onnx", "onnx-int8", "static", "--disable_tqdm", "true",
    ]  # fmt: skip
    recipe.main(*recipe.parse_args(argv))
    return str(run)


def test_the_recipe_writes_every_tier_checked_scored_and_timed(tiers_run):
    results = json.loads(open(os.path.join(tiers_run, "results.json")).read())
    tiers = {row["format"]: row for row in results["tiers"]}
    assert list(tiers) == ["pytorch", "onnx", "onnx-int8", "static"]
    chosen = results["students"][results["chosen_student"]]
    assert tiers["pytorch"]["accuracy"] == chosen["accuracy"] and tiers["pytorch"]["path"] == "student/model.safetensors"
    for row in tiers.values():
        assert os.path.exists(os.path.join(tiers_run, row["path"])) and row["size_mb"] > 0
        assert 0 <= row["accuracy"] <= 1 and row["batch_1_ms"] > 0 and row["texts_per_s"] > 0
    assert tiers["onnx"]["fp32_max_abs_diff"] <= 1e-4 and tiers["onnx-int8"]["int8_agreement"] >= 0.9
    assert tiers["static"]["path"] == "student_static" and tiers["static"]["held_out_rows"] >= 1

    # the fp32 graph scores as the PyTorch student does on the eval set
    assert tiers["onnx"]["accuracy"] == pytest.approx(chosen["accuracy"])
    # the static student's accuracy is its own predictions' on the eval set
    from model2vec.inference import StaticModelPipeline

    with open(os.path.join(os.path.dirname(tiers_run), "test.jsonl")) as handle:
        test = [json.loads(line) for line in handle]
    predicted = StaticModelPipeline.from_pretrained(os.path.join(tiers_run, "student_static")).predict([row["text"] for row in test])
    assert (predicted == np.asarray([row["label"] for row in test])).mean() == pytest.approx(tiers["static"]["accuracy"])


def test_the_card_lists_the_tiers_and_its_snippets_run(tiers_run, capsys):
    card = open(os.path.join(tiers_run, "student", "README.md")).read()
    section = card[card.index("### Faster tiers") : card.index("## Intended use")]
    for name in ("| PyTorch |", "| ONNX fp32 |", "| ONNX int8 |", "| static (Model2Vec) |"):
        assert name in section
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2 and "model_quantized.onnx" in blocks[0] and "StaticModelPipeline" in blocks[1]
    for block in blocks:
        exec(block, {})
    printed = capsys.readouterr().out.split()
    assert len(printed) == 2 and set(printed) <= set(LABELS)
    # a family member's card has no tiers: only the exported student has them
    other = 1 - json.loads(open(os.path.join(tiers_run, "results.json")).read())["chosen_student"]
    assert "### Faster tiers" not in open(os.path.join(tiers_run, "students", f"student_{other}", "README.md")).read()


def test_the_push_carries_the_tiers_and_the_space_serves_each(tiers_run, tmp_path, monkeypatch):
    from nanonet_hf.hub import write_space
    from nanonet_hf.hub.push import stage_student
    from nanonet_hf.results import RunResults

    results = RunResults.load(tiers_run)
    staged = tmp_path / "repo"
    staged.mkdir()
    stage_student(tiers_run, results, str(staged), "alice/tiny", license="apache-2.0")
    assert sorted(os.listdir(staged / "onnx")) == ["model.onnx", "model_quantized.onnx"]
    assert {"head.safetensors", "model.safetensors", "tokenizer.json"} <= set(os.listdir(staged / "static"))
    card = (staged / "README.md").read_text()
    assert 'hf_hub_download("alice/tiny", "onnx/model_quantized.onnx")' in card and 'allow_patterns=["static/*"]' in card

    for tier in ("pytorch", "onnx", "onnx-int8", "static"):
        space = write_space(str(tmp_path / f"space-{tier}"), "alice/tiny", tier=tier)
        config = json.loads(open(os.path.join(space, "space_config.json")).read())
        assert config["tier"] == tier
        requirements = open(os.path.join(space, "requirements.txt")).read()
        assert ("model2vec" in requirements) == (tier == "static") and ("onnxruntime" in requirements) == tier.startswith("onnx")
    monkeypatch.syspath_prepend(space)
    import app

    for tier in ("pytorch", "onnx", "onnx-int8", "static"):  # the staged repository folder stands for the Hub's
        scores = app.load_classifier(str(staged), tier)(["pasta goal today"])[0]
        assert set(scores) == set(LABELS) and abs(sum(scores.values()) - 1) < 1e-5
    with pytest.raises(ValueError, match="tier must be one of"):
        write_space(str(tmp_path / "bad"), "alice/tiny", tier="tflite")

    from nanonet_hf.deploy.tiers import fastest_tier

    assert fastest_tier(results) == min(results.tiers, key=lambda row: row["batch_1_ms"])["format"]


# ---- bad input: refused before any work ----------------------------------------------------------------------------


def test_an_unknown_format_is_refused_naming_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"export_formats \['tflite'\] unknown: choose among \['onnx', 'onnx-int8', 'static'\]"):
        MutualDistillationConfig(output_dir=str(tmp_path / "out"), export_formats=["onnx", "tflite"])
    assert check_export_formats(["onnx", "onnx", "static"]) == ["onnx", "static"]


@pytest.mark.parametrize(("fmt", "module", "extra"), [("onnx-int8", "onnxruntime", "onnx"), ("static", "model2vec", "static")])
def test_a_missing_extra_is_named(fmt, module, extra, monkeypatch, tmp_path):
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == module else found(name, *args))
    with pytest.raises(ImportError, match=rf"'{fmt}' needs \['{module}'\].*pip install 'nanonet-hf\[{extra}\]'"):
        MutualDistillationConfig(output_dir=str(tmp_path / "out"), export_formats=[fmt])


def test_a_static_student_without_an_unlabeled_pool_is_refused_before_any_work(tiny_model_dir, toy_pool, tmp_path):
    args = MutualDistillationConfig(output_dir=str(tmp_path / "out"), export_formats=["static"], report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match=r"'static' trains the static student on the teacher's labels of the unlabeled pool.*--unlabeled_file"):
        MutualDistillationTrainer(model=tiny_model_dir, args=args, train_dataset=toy_pool.select([0, 1, 20, 21, 40, 41]))
    assert not (tmp_path / "out").exists()


def test_the_recipe_refuses_an_unknown_format_before_any_work(tmp_path):
    recipe = load_script("recipes", "train.py")
    with pytest.raises(ValueError, match=r"export_formats \['pdf'\] unknown"):
        recipe.parse_args(["--dataset", "trec6", "--output_dir", str(tmp_path / "out"), "--export_formats", "pdf"])
    assert not (tmp_path / "out").exists()


def test_the_inference_benchmark_times_a_runs_tiers_beside_its_family(tiers_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiers_run, run)
    results = json.loads((run / "results.json").read_text())
    results["dataset"] = "trec6"  # the benchmark times on a built-in test split; the tiny model reads its words as unknown
    (run / "results.json").write_text(json.dumps(results))
    benchmark = load_script("benchmarks", "inference.py")
    benchmark.main(["--run_dir", str(run), "--teacher", "", "--repeats", "1", "--warmup", "0", "--json", str(tmp_path / "b.json")])
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    exported = f"student, {results['cohort']['depths'][results['chosen_student']]} layers"
    for tier in ("ONNX fp32", "ONNX int8", "static (Model2Vec)"):
        row = rows[f"{exported}, {tier}"]
        assert row["batch_1_ms"] > 0 and row["texts_per_s"] > 0 and row["size_mb"] > 0 and 0 <= row["accuracy"] <= 1
    assert f"| {exported}, ONNX int8 |" in capsys.readouterr().out


def test_the_static_students_targets_are_the_labels_then_the_teacher_or_else_the_cohorts_ensemble(tiny_model_dir, tokenizer, datasets, tmp_path):
    from scipy.special import softmax

    from nanonet_hf.deploy.tiers import static_training_rows

    from .test_trainer import make_args, make_trainer

    train, _ = datasets
    labels = np.asarray(train["labels"])
    labeled = labels >= 0
    trainer = make_trainer(tiny_model_dir, tokenizer, make_args(tmp_path, teacher_temperature=2.0), train)
    texts, targets, held_out = static_training_rows(trainer)
    assert texts == list(train["text"]) and targets.shape == (len(texts), len(LABELS))
    np.testing.assert_array_equal(targets[labeled], np.eye(len(LABELS))[labels[labeled]])  # the labels, one-hot
    teacher = softmax(np.asarray(train["teacher_logits"])[~labeled] / 2.0, axis=-1)  # at the students' temperature
    np.testing.assert_allclose(targets[~labeled], teacher, atol=1e-6)
    assert not held_out[labeled].any() and held_out.sum() == max(1, int(0.1 * (~labeled).sum()))

    # no cached teacher logits (an online teacher, or none): the cohort's ensemble, the mean of its students' softmax
    plain = trainer.train_dataset.remove_columns("teacher_logits")
    trainer = make_trainer(tiny_model_dir, tokenizer, make_args(tmp_path, lambda_kd=0.0, student_selection="ensemble"), plain)
    _, targets, _ = static_training_rows(trainer)
    from datasets import Dataset

    cohort = trainer.predict(Dataset.from_dict({"text": list(plain["text"])})).predictions
    np.testing.assert_allclose(targets[~labeled], softmax(cohort, axis=-1).mean(axis=1)[~labeled], atol=1e-5)
