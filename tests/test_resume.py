"""A training process killed with SIGKILL after a checkpoint resumes to exactly the weights of an uninterrupted run."""

import os
import signal
import subprocess
import sys

import pytest
import safetensors.torch
import torch

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "train_tiny.py")


def run(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, timeout=300, check=False)


@pytest.mark.slow
def test_sigkill_then_resume_reaches_the_uninterrupted_weights(tiny_model_dir, tmp_path):
    uninterrupted = run(tiny_model_dir, str(tmp_path / "straight"))
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    killed = run(tiny_model_dir, str(tmp_path / "crash"), "--kill-at-step", "5")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "crash")) == ["checkpoint-2", "checkpoint-4"]  # no final weights: it died
    resumed = run(tiny_model_dir, str(tmp_path / "crash"), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from checkpoint-4" in resumed.stdout

    expected = safetensors.torch.load_file(tmp_path / "straight" / "final.safetensors")
    actual = safetensors.torch.load_file(tmp_path / "crash" / "final.safetensors")
    assert expected.keys() == actual.keys() and len(expected) > 0
    students = {name.split(".")[-2] for name in expected if "lora_A" in name}
    assert students == {"student_0", "student_1", "student_2"}  # every student, LoRA and heads, compared
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=0, rtol=0, msg=name)
    # and the run really trained: the weights differ from the checkpoint it resumed from
    at_step_4 = safetensors.torch.load_file(tmp_path / "crash" / "checkpoint-4" / "model.safetensors")
    assert any(not torch.equal(at_step_4[name], actual[name]) for name in actual)
