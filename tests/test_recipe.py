"""The recipe: its command line, its input checks, and one end-to-end run on the real packaged model and TREC-6."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from nanonet_hf import MutualDistillationConfig

from .conftest import load_script, write_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "recipes"))

import train as recipe  # noqa: E402


def test_yaml_sets_defaults_and_flags_override(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("dataset: trec6\nlabels_per_class: 5\nnum_students: 3\nlearning_rate: 0.002\noutput_dir: a\n")
    script, training = recipe.parse_args(["--config", str(config), "--num_students", "2", "--output_dir", "b"])
    assert (script.dataset, script.labels_per_class) == ("trec6", 5)
    assert (training.num_students, training.learning_rate, training.output_dir) == (2, 0.002, "b")


def test_unknown_yaml_key_is_named(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("dataset: trec6\nnum_studnets: 3\n")
    with pytest.raises(SystemExit, match=r"unknown option\(s\) \['num_studnets'\]"):
        recipe.parse_args(["--config", str(config)])


def test_bad_input_fails_before_any_work(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="Unknown dataset 'trec7'"):
        recipe.main(*recipe.parse_args(["--dataset", "trec7", "--labels_per_class", "5", "--output_dir", str(out)]))
    rows = [{"text": f"text {i}", "label": "a" if i % 2 else "b"} for i in range(10)]
    labeled = write_jsonl(tmp_path / "pool.jsonl", rows)
    with pytest.raises(ValueError, match="'a' has 5"):
        recipe.main(
            *recipe.parse_args(["--labeled_file", labeled, "--labels_per_class", "6", "--output_dir", str(out)])
        )
    with pytest.raises(ValueError, match="student_layers=9 must be between 1 and the base's 6 layers"):
        recipe.main(
            *recipe.parse_args(["--dataset", "trec6", "--labels_per_class", "2", "--student_layers", "9", "--output_dir", str(out)])
        )
    # a family's bad entry is named with its student, and a list of the wrong length with num_students
    for layers, message in ((["6", "0"], r"student_layers\[1\]=0 must be between 1"),
                            (["6", "3,1"], r"student_layers\[1\]=\[3, 1\] must be distinct increasing"),
                            (["6", "3", "2"], "gives 3 entries, one per student, but num_students is 2")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            recipe.main(*recipe.parse_args(["--dataset", "trec6", "--labels_per_class", "2", "--student_layers", *layers,
                                            "--output_dir", str(out)]))  # fmt: skip
    with pytest.raises(ValueError, match="layer count like '3' or layer indices"):
        recipe.parse_args(["--dataset", "trec6", "--student_layers", "six", "--output_dir", str(out)])
    assert not out.exists()
    assert not out.exists()


@pytest.mark.slow
def test_recipe_end_to_end_on_the_real_model_and_trec6(tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable, os.path.join(ROOT, "recipes", "train.py"),
        "--config", os.path.join(ROOT, "recipes", "configs", "trec6.yaml"),
        "--output_dir", str(out),
        "--labels_per_class", "4",
        "--max_unlabeled", "96",
        "--num_students", "2",
        "--per_device_train_batch_size", "8",
        "--max_steps", "6",
        "--setfit_iterations", "2",  # the default teacher, SetFit on the MPNet body, on 2 pairs per label
        "--speed_repeats", "2",
        "--selection_rows", "32",
        "--logging_steps", "3",
        "--eval_steps", "3",  # the YAML evaluates every 100 steps: here at steps 3 and 6, for the card's curve
        "--supervised_baseline", "true",  # off in the YAML (the default run's time budget)
        "--export_formats", "onnx", "onnx-int8", "static",  # every deployment tier, on the real MiniLM
    ]  # fmt: skip
    began = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    elapsed = time.perf_counter() - began
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| teacher" in result.stdout and "| ensemble of students" in result.stdout

    results = json.loads((out / "results.json").read_text())
    assert results["label_budget"] == {"labels_per_class": 4, "labeled": 24, "unlabeled": 96, "generated": 0, "test": 500}
    assert len(results["students"]) == 2 and results["chosen_student"] in (0, 1)
    for entry in [results["teacher"], results["ensemble"], results["supervised_only"], *results["students"]]:
        assert 0 <= entry["accuracy"] <= 1 and 0 <= entry["macro_f1"] <= 1
    assert results["cohort"]["steps"] == 6
    wall = results["wall_time_s"]
    assert sum(value for key, value in wall.items() if key != "total_s") <= wall["total_s"] + 0.5 <= elapsed + 0.5

    # the exported student is a plain transformers model with the TREC labels, and scores as it did in the cohort
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from nanonet_hf.data import load_trec6
    from nanonet_hf.inference import predict_logits

    model = AutoModelForSequenceClassification.from_pretrained(out / "student")
    assert list(model.config.id2label.values()) == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    test = load_trec6()["test"]
    predictions = predict_logits(model, AutoTokenizer.from_pretrained(out / "student"), test["text"]).argmax(-1)
    accuracy = float((predictions == np.asarray(test["label"])).mean())
    assert accuracy == pytest.approx(results["students"][results["chosen_student"]]["accuracy"], abs=1e-9)

    # the model card: the real base model and dataset are named by their Hub ids, the curve has both evaluations
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "student" / "README.md")
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2" and card.data.datasets == ["CogComp/trec"]
    assert card.data.eval_results[0].metric_value == round(results["students"][results["chosen_student"]]["accuracy"], 4)
    assert results["learning_curve"]["step"] == [3, 6] and (out / "student" / "learning_curve.png").is_file()
    assert results["examples"][0] in card.text  # a TREC question in the how-to-load snippet

    # the family: the 6-layer and the 3-layer student, each a plain model of its own depth with its card, each scoring
    # as it did in the cohort, timed beside the MPNet teacher
    assert results["cohort"]["depths"] == [6, 3] and results["cohort"]["student_layers"] == [[0, 1, 2, 3, 4, 5], [0, 1, 2]]
    family = {row["name"]: row for row in results["family"]}
    assert set(family) == {"student 0", "student 1", "teacher"}
    for k, depth in enumerate([6, 3]):
        row = family[f"student {k}"]
        folder = out / row["dir"]
        member = AutoModelForSequenceClassification.from_pretrained(folder)
        assert row["layers"] == member.config.num_hidden_layers == depth and row["parameters"] == member.num_parameters()
        predictions = predict_logits(member, AutoTokenizer.from_pretrained(folder), test["text"]).argmax(-1)
        assert float((predictions == np.asarray(test["label"])).mean()) == pytest.approx(results["students"][k]["accuracy"], abs=1e-9)
        assert row["accuracy"] == results["students"][k]["accuracy"]
        assert f"**student {k} ({depth} layers) (this model)**" in (folder / "README.md").read_text()
    assert family["student 0"]["parameters"] > family["student 1"]["parameters"]
    for row in family.values():
        assert row["batch_1_ms"] > 0 and row["batch_32_ms"] > 0 and row["texts_per_s"] > 0 and "CPU" in row["measured_on"]
    assert "| student 1" in result.stdout and "vs teacher" in result.stdout  # the recipe prints the family table
    assert "## Accuracy and speed" in card.text

    # the deployment tiers of the exported student: the ONNX graphs give its logits (int8: its class on most rows),
    # the static student loads with model2vec; each scored on the test split and timed with the family
    from model2vec.inference import StaticModelPipeline

    from nanonet_hf.deploy.onnx_export import OnnxClassifier

    tiers = {row["format"]: row for row in results["tiers"]}
    assert list(tiers) == ["pytorch", "onnx", "onnx-int8", "static"] and "| ONNX int8 |" in result.stdout
    tokenizer = AutoTokenizer.from_pretrained(out / "student")
    graph = OnnxClassifier(str(out / "student" / "onnx" / "model.onnx"), tokenizer)
    reference = predict_logits(model, tokenizer, test["text"][:64], max_length=tokenizer.model_max_length)
    np.testing.assert_allclose(graph.logits(test["text"][:64]), reference, atol=1e-4, rtol=1e-4)
    assert tiers["onnx"]["accuracy"] == pytest.approx(accuracy, abs=1e-9) and tiers["onnx"]["fp32_max_abs_diff"] <= 1e-4
    assert tiers["onnx-int8"]["int8_agreement"] >= 0.9 and tiers["onnx-int8"]["size_mb"] < tiers["onnx"]["size_mb"] / 3
    static = StaticModelPipeline.from_pretrained(str(out / "student_static"))
    assert list(static.classes_) == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    static_accuracy = float((static.predict_proba(test["text"]).argmax(-1) == np.asarray(test["label"])).mean())
    assert static_accuracy == pytest.approx(tiers["static"]["accuracy"], abs=1e-9)
    for row in tiers.values():
        assert row["texts_per_s"] > 0 and row["size_mb"] > 0
    assert "### Faster tiers" in card.text and "StaticModelPipeline.from_pretrained" in card.text


MPNET = "sentence-transformers/all-mpnet-base-v2"
PREDICT_WITHOUT_PEFT = """
import json, sys
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
folder, texts = sys.argv[1], json.loads(sys.argv[2])
model, tokenizer = AutoModelForSequenceClassification.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
with torch.no_grad():
    logits = model(**tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")).logits
assert "peft" not in sys.modules, "loading the exported student imported peft"
print(json.dumps({"type": model.config.model_type, "layers": model.config.num_hidden_layers, "logits": logits.tolist()}))
"""


@pytest.mark.slow
def test_recipe_on_the_real_mpnet_base_exports_a_plain_mpnet_student(tmp_path):
    """A non-BERT base end to end: the all-mpnet-base-v2 body (the MPNet wheels) under 2 students, cut to 2 layers;
    the export reloads without peft and scores exactly what the evaluated student scored."""
    from peft import AutoPeftModelForSequenceClassification

    from nanonet_hf.data import load_trec6
    from nanonet_hf.resources import resolve_model_path

    try:
        resolve_model_path(MPNET)
    except FileNotFoundError as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(error))
    test = load_trec6()["test"].select(range(40))
    names = test.features["label"].names
    texts, labels = list(test["text"]), list(test["label"])
    eval_file = write_jsonl(tmp_path / "test.jsonl", [{"text": t, "label": names[y]} for t, y in zip(texts, labels)])
    out = tmp_path / "run"
    argv = [
        "--model_name_or_path", MPNET, "--dataset", "trec6", "--eval_file", eval_file, "--labels_per_class", "4",
        "--max_unlabeled", "64", "--num_students", "2", "--student_layers", "2", "--adapter_layers", "1",
        "--max_steps", "6", "--per_device_train_batch_size", "8", "--teacher_type", "fine_tune",
        "--teacher_num_train_epochs", "1", "--supervised_baseline",
        "false", "--max_length", "32", "--report_to", "none", "--output_dir", str(out),
    ]  # fmt: skip
    results = recipe.main(*recipe.parse_args(argv)).to_dict()
    chosen = results["students"][results["chosen_student"]]

    result = subprocess.run(
        [sys.executable, "-c", PREDICT_WITHOUT_PEFT, str(out / "student"), json.dumps(texts)],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert (loaded["type"], loaded["layers"]) == ("mpnet", 2)
    logits = np.asarray(loaded["logits"])
    accuracy = float((logits.argmax(-1) == np.asarray(labels)).mean())
    assert accuracy == pytest.approx(chosen["accuracy"], abs=1e-9)
    # the adapter on its saved base gives the merged student's logits
    from transformers import AutoTokenizer

    adapter = AutoPeftModelForSequenceClassification.from_pretrained(out / "student_adapter").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "student_adapter")
    import torch

    with torch.no_grad():
        inputs = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
        np.testing.assert_allclose(adapter(**inputs).logits.numpy(), logits, atol=1e-4)


def test_recipe_with_bias_students_views_an_online_teacher_and_generated_text(tiny_model_dir, tiny_lm, tmp_path, monkeypatch):
    """The quality options end to end on the tiny model: the export is the chosen bias-only student, the card says so,
    and the online teacher is saved and is what the results report."""
    from transformers import AutoModelForSequenceClassification

    from .conftest import LABELS, write_toy_files

    pool, test = write_toy_files(tmp_path)
    out = tmp_path / "run"
    argv = [
        "--model_name_or_path", tiny_model_dir, "--labeled_file", pool, "--eval_file", test, "--labels_per_class", "4",
        "--num_students", "3", "--adapter_type", "bias", "--student_views", "cutoff,shuffle,adversarial",
        "--student_layers", "null", "--online_teacher", "--lambda_teacher_mutual", "0.5", "--max_steps", "3",
        "--per_device_train_batch_size", "8",
        "--teacher_num_train_epochs", "1", "--learning_rate", "0.01", "--max_length", "16", "--report_to", "none",
        "--output_dir", str(out), "--generate_unlabeled", "3", "--generator_model", tiny_lm,
    ]  # fmt: skip
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(tmp_path / "cache"))
    results = recipe.main(*recipe.parse_args(argv)).to_dict()
    assert results["cohort"]["adapter"] == "bias" and results["training"]["online_teacher"] is True
    budget = results["label_budget"]
    assert 1 <= budget["generated"] <= 3 and budget["unlabeled"] == 12 * 3 - 12 + budget["generated"]
    assert {"online_teacher", "results.json", "student", "teacher"} <= set(os.listdir(out))
    assert not {"student_adapter", "student_base"} & set(os.listdir(out))  # bias-only: the merged student alone
    model = AutoModelForSequenceClassification.from_pretrained(out / "student")
    assert sorted(model.config.id2label.values()) == sorted(LABELS)
    card = (out / "student" / "README.md").read_text()
    assert "bias offsets" in card and "cutoff,shuffle,adversarial" in card and "online" in card
    online = AutoModelForSequenceClassification.from_pretrained(out / "online_teacher")
    warm_up = AutoModelForSequenceClassification.from_pretrained(out / "teacher")
    assert not all(
        (a == b).all() for a, b in zip(online.state_dict().values(), warm_up.state_dict().values())
    ), "the online teacher did not train"


def test_default_config_holds_the_accuracy_benchmarks_settings():
    """recipes/configs/trec6.yaml (the default run) is what benchmarks/results/family/accuracy.md calls nanonet: every
    committed command's settings (the YAML, its overrides and --set values) and teacher agree with the config, which
    in turn carries MutualDistillationConfig's defaults."""
    import shlex

    benchmark = load_script("benchmarks", "accuracy.py")
    saved = json.loads(open(os.path.join(ROOT, "benchmarks", "results", "family", "accuracy.json")).read())
    script_args, training_args = recipe.parse_args(["--config", os.path.join(ROOT, "recipes", "configs", "trec6.yaml")])
    defaults = MutualDistillationConfig(output_dir="unused")
    keys = ("num_students", "student_layers", "lora_r", "lora_alpha", "lora_target_modules", "student_views", "temperature",
            "lambda_kd", "lambda_mut", "max_steps", "learning_rate", "per_device_train_batch_size", "unlabeled_ratio",
            "max_length", "train_sampling_strategy", "teacher_temperature", "teacher_type", "setfit_body",
            "setfit_iterations")  # fmt: skip
    for key in keys:
        assert getattr(training_args, key) == getattr(defaults, key), key
    for command in saved.get("commands", [saved.get("command")]):  # every run merged into the committed results
        args = benchmark.parse_args(shlex.split(command)[2:])
        settings = benchmark.nanonet_settings(args)
        for key in keys:
            assert getattr(training_args, key) == settings.get(key, getattr(defaults, key)), (key, command)
        assert args.teacher == "SetFit MPNet" and args.setfit_iterations == training_args.setfit_iterations
        assert script_args.max_unlabeled == args.max_unlabeled, command
