"""The recipe under `accelerate launch --config_file recipes/accelerate_configs/multi_cpu.yaml` (2 processes, gloo): same results as one process at the same
global batch, teacher logits computed once, exports written once."""

import json
import os
import socket
import subprocess
import sys

import pytest
import safetensors.torch
import torch
from datasets import ClassLabel, Dataset, Features, Value

from nanonet_hf.teachers import train_teacher

from .conftest import LABELS, make_texts, write_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_files(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    texts, labels = make_texts(20, seed=0)
    pool = write_jsonl(folder / "pool.jsonl", [{"text": t, "label": LABELS[y]} for t, y in zip(texts, labels, strict=True)])
    texts, labels = make_texts(6, seed=7)
    test = write_jsonl(folder / "test.jsonl", [{"text": t, "label": LABELS[y]} for t, y in zip(texts, labels, strict=True)])
    texts, labels = make_texts(3, seed=1)
    features = Features({"text": Value("string"), "label": ClassLabel(names=sorted(LABELS))})
    labeled = Dataset.from_dict({"text": texts, "label": [sorted(LABELS).index(LABELS[y]) for y in labels]}, features=features)
    teacher = train_teacher(tiny_model_dir, labeled, str(folder / "teacher"), num_train_epochs=2, max_length=16)
    return {"pool": pool, "test": test, "teacher": teacher}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(num_processes: int, per_device_batch: int, run_files, tiny_model_dir, out, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", os.path.join(ROOT, "recipes", "accelerate_configs", "multi_cpu.yaml"),
        "--num_processes", str(num_processes), "--main_process_port", str(free_port()),
        os.path.join(ROOT, "recipes", "train.py"),
        "--model_name_or_path", tiny_model_dir, "--teacher_name_or_path", run_files["teacher"],
        "--labeled_file", run_files["pool"], "--eval_file", run_files["test"], "--labels_per_class", "4",
        "--num_students", "2", "--student_layers", "3", "2",  # a 3-layer and a 2-layer student of the tiny base
        "--per_device_train_batch_size", str(per_device_batch), "--max_steps", "6",
        "--learning_rate", "0.01", "--max_length", "16", "--supervised_baseline", "false",
        "--save_strategy", "no", "--eval_strategy", "no", "--report_to", "none", "--logging_steps", "1",
        "--seed", "0", "--output_dir", str(out), "--disable_tqdm", "true", "--log_level", "info",
        # random order: length grouping (the default) sorts rows within groups of the per-device batch size, so 2 x 4
        # rows and 1 x 8 rows make different global batches by design
        "--train_sampling_strategy", "random", "--allow_weak_teacher", "true", *extra,  # a random tiny teacher
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(out) + "-cache", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.slow
def test_two_processes_match_one_at_the_same_global_batch(run_files, tiny_model_dir, tmp_path):
    single = launch(1, 8, run_files, tiny_model_dir, tmp_path / "one")
    double = launch(2, 4, run_files, tiny_model_dir, tmp_path / "two")

    # two processes really formed one group: per-device batch 4, global batch 8 (as the single process's 8)
    assert "Total train batch size (w. parallel, distributed & accumulation) = 8" in double.stderr, double.stderr[-3000:]
    assert "Total train batch size (w. parallel, distributed & accumulation) = 8" in single.stderr

    # teacher logits (of the training rows, then of the test rows): computed by one process, read from the cache by
    # the other
    assert double.stderr.count("Computing teacher logits") == 2, double.stderr[-3000:]
    assert single.stderr.count("Computing teacher logits") == 2

    one, two = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("one", "two"))
    assert one["cohort"]["steps"] == two["cohort"]["steps"] == 6
    for a, b in zip(one["students"] + [one["ensemble"]], two["students"] + [two["ensemble"]], strict=True):
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-9) and a["macro_f1"] == pytest.approx(b["macro_f1"], abs=1e-9)
    assert one["chosen_student"] == two["chosen_student"]

    # the exported students (the chosen one, and the family of a 3-layer and a 2-layer student): same weights up to
    # the order of floating-point reductions
    for folder in ("student", "students/student_0", "students/student_1"):
        weights_one = safetensors.torch.load_file(tmp_path / "one" / folder / "model.safetensors")
        weights_two = safetensors.torch.load_file(tmp_path / "two" / folder / "model.safetensors")
        assert weights_one.keys() == weights_two.keys()
        for name in weights_one:
            torch.testing.assert_close(weights_two[name], weights_one[name], atol=1e-5, rtol=1e-4)
    weights_one = safetensors.torch.load_file(tmp_path / "one" / "student" / "model.safetensors")
    # the weights really moved in training: the comparison is not between two untrained models
    base = safetensors.torch.load_file(os.path.join(tiny_model_dir, "model.safetensors"))
    query = next(name for name in weights_one if name.endswith("attention.self.query.weight"))
    assert not torch.allclose(weights_one[query], base[query])

    # the main process alone wrote the exports: one folder each, no leftovers of a second writer
    assert sorted(name for name in os.listdir(tmp_path / "two") if not name.startswith(("runs", "trainer_state"))) == [
        "results.json", "student", "student_adapter", "student_base", "students",
    ]  # fmt: skip


@pytest.mark.slow
def test_online_teacher_and_views_under_two_processes(run_files, tiny_model_dir, tmp_path):
    """The online teacher's gradients are averaged over the processes like the students' (it lives in the DDP
    module): two processes at per-device batch 4 end with the teacher one process ends with at batch 8. Its loss is
    its own cross-entropy, so the students' random views do not touch it; they must just run under DDP."""
    extra = ("--online_teacher", "--online_teacher_learning_rate", "0.01", "--student_views", "cutoff,adversarial")
    launch(1, 8, run_files, tiny_model_dir, tmp_path / "one", *extra)
    launch(2, 4, run_files, tiny_model_dir, tmp_path / "two", *extra)
    one, two, warm_up = (
        safetensors.torch.load_file(os.path.join(folder, "model.safetensors"))
        for folder in (tmp_path / "one" / "online_teacher", tmp_path / "two" / "online_teacher", run_files["teacher"])
    )
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4)
    assert any(not torch.allclose(one[name], warm_up[name]) for name in one), "the online teacher did not train"


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(ROOT, "recipes", "accelerate_configs"))))
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(os.path.join(ROOT, "recipes", "accelerate_configs", name))
    assert config.num_processes >= 2 and config.compute_environment.value == "LOCAL_MACHINE"


@pytest.mark.slow
def test_a_setfit_teacher_and_its_fitted_temperature_under_two_processes(run_files, tiny_model_dir, tmp_path):
    """The SetFit teacher (the default) under two processes: SetFit's trainer wraps the body in DDP, so every process
    trains it, then its three fold teachers (teacher_temperature=fit), together; the main process alone computes and
    caches their logits, and both fit the temperature one process fits."""
    extra = ("--teacher_name_or_path", tiny_model_dir,  # the last flag wins: SetFit on the tiny base, not the classifier
             "--teacher_type", "setfit", "--setfit_iterations", "1", "--teacher_temperature", "fit")  # fmt: skip
    single = launch(1, 8, run_files, tiny_model_dir, tmp_path / "one", *extra)
    double = launch(2, 4, run_files, tiny_model_dir, tmp_path / "two", *extra)
    one, two = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("one", "two"))
    assert one["training"]["teacher_temperature_fit"]["folds"] == 3
    assert one["training"]["teacher_temperature"] == two["training"]["teacher_temperature"]
    # four SetFit trainings (the teacher, a teacher per fold), each joined by every process
    assert single.stderr.count("Num unique pairs") == 4 and double.stderr.count("Num unique pairs") == 8, double.stderr[-3000:]
    assert double.stderr.count("Teacher temperature fitted") == 2  # each process read the same folds' logits
    assert two["students"] is not None and two["cohort"]["steps"] == 6
    # SetFit's own TrainingArguments reset accelerate's process state; once it has trained, the run is one gloo group
    # again (teachers/setfit.py: keep_accelerate_state): the cohort trains as one process does at the same global batch,
    # and the main process alone prints the table and writes the exports
    assert one["students"] == two["students"] and double.stdout.count("| teacher") == 2  # results and family tables
    for folder in ("student", "students/student_0", "students/student_1"):
        weights_one = safetensors.torch.load_file(tmp_path / "one" / folder / "model.safetensors")
        weights_two = safetensors.torch.load_file(tmp_path / "two" / folder / "model.safetensors")
        for name in weights_one:
            torch.testing.assert_close(weights_two[name], weights_one[name], atol=1e-5, rtol=1e-4)
