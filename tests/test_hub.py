"""Publishing, offline: the card, push → load round trips against a local Hub-compatible server, failures and retries,
the token's secrecy, the Space folder, and the CLI."""

import hashlib
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
from huggingface_hub import ModelCard, SpaceCard

from nanonet_hf.hub import PushError, model_card, push_space, push_student, write_space
from nanonet_hf.files import folder_parameters
from nanonet_hf.hub.card import LEARNING_CURVE_FILE

from .conftest import LABELS, make_texts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "hf_nanonetTestToken0123456789abcdef"


def tree_digest(folder: str) -> dict[str, str]:
    digests = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            with open(path, "rb") as handle:
                digests[os.path.relpath(path, folder)] = hashlib.sha256(handle.read()).hexdigest()
    return digests


def uploaded_files(server, repo_id: str, repo_type: str = "model") -> dict[str, bytes]:
    repo = server.hub.repos[(repo_type, repo_id)]
    return {path: Path(disk).read_bytes() for path, disk in server.hub.files(repo, repo.refs["main"]).items()}


LOAD = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
    source, texts, peft = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "peft"
    if peft:
        from peft import AutoPeftModelForSequenceClassification as Auto
    else:
        Auto = AutoModelForSequenceClassification
    model = Auto.from_pretrained(source).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    labels = [p["label"] for p in pipeline("text-classification", model=source)(texts)] if not peft else None
    print(json.dumps({"logits": logits.tolist(), "labels": labels, "peft_imported": "peft" in sys.modules}))
    """
)


def load_in_subprocess(source: str, texts: list[str], tmp_path, endpoint: str | None = None, peft: bool = False) -> dict:
    """Load like a fresh user: another process, an empty cache, the Hub client pointed at `endpoint`."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_XET": "1"}
    if endpoint:
        env.update(HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="0")
    result = subprocess.run(
        [sys.executable, "-c", LOAD, source, json.dumps(texts), "peft" if peft else "plain"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---- the card ------------------------------------------------------------------------------------------------------


def test_card_front_matter_model_index_and_learning_curve(tiny_run):
    results = json.loads(Path(os.path.join(tiny_run, "results.json")).read_text())
    student = os.path.join(tiny_run, "student")
    card = ModelCard.load(os.path.join(student, "README.md"))
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-classification"
    assert {"nanonet", "mutual-distillation", "peft"} <= set(data["tags"]) and data["license"] == "apache-2.0"
    assert "base_model" not in data  # a local folder is no Hub id

    chosen = results["students"][results["chosen_student"]]
    metrics = {m["type"]: m["value"] for m in data["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"accuracy": round(chosen["accuracy"], 4), "f1": round(chosen["macro_f1"], 4)}
    assert card.data.eval_results[1].metric_args == {"average": "macro"}

    # the learning curve: 2 evaluations (steps 2 and 4) of 2 students, saved as a PNG and shown in the card
    assert results["learning_curve"]["step"] == [2, 4] and len(results["learning_curve"]["students"]) == 2
    with open(os.path.join(student, LEARNING_CURVE_FILE), "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert f"]({LEARNING_CURVE_FILE})" in card.text

    # the body: budget, cohort, every row of the table, the load snippet, citations
    budget = results["label_budget"]
    assert f"**{budget['labeled']} labels** ({budget['labels_per_class']} per class)" in card.text
    assert f"**{budget['unlabeled']} unlabeled texts**" in card.text
    assert "A cohort of **2 students**" in card.text
    for k, metrics_k in enumerate(results["students"]):
        assert f"{100 * metrics_k['accuracy']:.2f}% | {100 * metrics_k['macro_f1']:.2f}% |" in card.text
    assert f"{100 * results['teacher']['accuracy']:.2f}%" in card.text
    assert f'pipeline("text-classification", model="{student}")' in card.text
    assert "arXiv:2602.06093" in card.text and "- cohort training (with its evaluations): " in card.text
    # the teacher on the labeled rows beside the majority class; the length trained at, which the tokenizer keeps
    checked = results["teacher_labeled"]
    assert checked["rows"] == budget["labeled"] and checked["how"] == "held out: 3-fold cross-fitting"
    line = (f"On the {checked['rows']} labeled rows ({checked['how']}) it is right on {100 * checked['accuracy']:.1f}%, "
            f"against {100 * checked['majority']:.1f}% for always answering the majority class")  # fmt: skip
    assert line in card.text and ("allowed a weak teacher" in card.text) != checked["beats_majority"]
    assert results["training"]["max_length"] == 16 and "trained on texts of at most 16 tokens" in card.text
    assert json.loads(Path(student, "tokenizer_config.json").read_text())["model_max_length"] == 16


def test_card_names_the_hub_dataset_and_base_model(tiny_run):
    results = json.loads(Path(os.path.join(tiny_run, "results.json")).read_text())
    results.update(dataset="trec6", dataset_id="CogComp/trec", dataset_title="TREC-6 questions", learning_curve=None)
    results.update(base_model="sentence-transformers/all-MiniLM-L6-v2")
    card = model_card(results, "alice/trec6-student", license="mit")
    data = ModelCard(str(card)).data.to_dict()  # the rendered text parses back
    assert data["datasets"] == ["CogComp/trec"] and data["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert data["license"] == "mit" and data["model-index"][0]["name"] == "trec6-student"
    assert data["model-index"][0]["results"][0]["dataset"]["type"] == "CogComp/trec"
    assert 'model="alice/trec6-student"' in card.text and "learning_curve.png" not in card.text


def test_card_refuses_foreign_results(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"students": []}))
    with pytest.raises(ValueError, match=r"lacks \['ensemble', 'teacher'"):
        push_student(str(tmp_path), "alice/x", dry_run_dir=str(tmp_path / "dry"))


# ---- push → load ----------------------------------------------------------------------------------------------------


def test_push_then_from_pretrained_gives_the_same_predictions(tiny_run, hub, tmp_path):
    before = tree_digest(tiny_run)
    result = push_student(tiny_run, "alice/tiny-student", endpoint=hub.endpoint, token=TOKEN)
    assert result.commit_url.startswith(f"{hub.endpoint}/alice/tiny-student/commit/")
    assert tree_digest(tiny_run) == before  # the run folder is only read

    files = uploaded_files(hub, "alice/tiny-student")
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", LEARNING_CURVE_FILE} <= set(files)
    assert ModelCard(files["README.md"].decode()).data.to_dict()["model-index"][0]["name"] == "tiny-student"
    assert 'model="alice/tiny-student"' in files["README.md"].decode()
    assert all(auth == f"Bearer {TOKEN}" for method, path, auth in hub.hub.requests if path.startswith("/api/"))

    texts, _ = make_texts(2, seed=9)
    remote = load_in_subprocess("alice/tiny-student", texts, tmp_path, endpoint=hub.endpoint)
    local = load_in_subprocess(os.path.join(tiny_run, "student"), texts, tmp_path)
    np.testing.assert_allclose(remote["logits"], local["logits"], atol=1e-6)
    assert remote["labels"] == local["labels"] and set(remote["labels"]) <= set(LABELS)
    assert not remote["peft_imported"]
    head = hub.hub.repos[("model", "alice/tiny-student")].refs["main"]
    assert ("GET", f"/alice/tiny-student/resolve/{head}/model.safetensors") in {(m, p) for m, p, _ in hub.hub.requests}


def test_push_adapter_repo_loads_with_peft_from_the_hub(tiny_run, hub, tmp_path):
    result = push_student(
        tiny_run, "alice/tiny-student", adapter_repo_id="alice/tiny-student-lora", endpoint=hub.endpoint, token=TOKEN
    )
    assert result.base_commit_url.startswith(f"{hub.endpoint}/alice/tiny-student-lora-base/commit/")
    adapter = uploaded_files(hub, "alice/tiny-student-lora")
    assert json.loads(adapter["adapter_config.json"])["base_model_name_or_path"] == "alice/tiny-student-lora-base"
    assert str(tmp_path) not in adapter["adapter_config.json"].decode() and tiny_run not in adapter["adapter_config.json"].decode()

    texts, _ = make_texts(2, seed=9)
    via_peft = load_in_subprocess("alice/tiny-student-lora", texts, tmp_path, endpoint=hub.endpoint, peft=True)
    merged = load_in_subprocess(os.path.join(tiny_run, "student"), texts, tmp_path)
    np.testing.assert_allclose(via_peft["logits"], merged["logits"], atol=1e-5)


def test_push_to_a_branch_and_as_a_pull_request(tiny_run, hub):
    push_student(tiny_run, "alice/tiny-student", endpoint=hub.endpoint, token=TOKEN)
    repo = hub.hub.repos[("model", "alice/tiny-student")]
    main_head = repo.refs["main"]

    push_student(tiny_run, "alice/tiny-student", endpoint=hub.endpoint, token=TOKEN, revision="v2", commit_message="v2")
    assert "v2" in repo.refs and repo.refs["main"] == main_head

    # a pull request needs a change: another license gives another card
    result = push_student(tiny_run, "alice/tiny-student", endpoint=hub.endpoint, token=TOKEN, create_pr=True, license="mit")
    assert result.pr_url == f"{hub.endpoint}/alice/tiny-student/discussions/1"
    assert repo.refs["main"] == main_head and "refs/pr/1" in repo.refs


def test_push_failure_is_clear_leaves_the_export_untouched_and_a_retry_succeeds(tiny_run, hub, tmp_path):
    before = tree_digest(tiny_run)
    hub.hub.fail_with = 500
    with pytest.raises(PushError, match=r"(?s)alice/tiny-student on http://127\.0\.0\.1:\d+ failed: .*500.*run the same push again"):
        push_student(tiny_run, "alice/tiny-student", endpoint=hub.endpoint, token=TOKEN)
    assert tree_digest(tiny_run) == before

    hub.hub.fail_with = None
    result = push_student(tiny_run, "alice/tiny-student", endpoint=hub.endpoint, token=TOKEN)
    assert result.commit_url.startswith(hub.endpoint) and "model.safetensors" in uploaded_files(hub, "alice/tiny-student")


def test_push_to_a_server_that_does_not_listen(tiny_run, hub):
    import socket

    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    before = tree_digest(tiny_run)
    with pytest.raises(PushError, match="(?s)failed: .*Connect") as error:
        push_student(tiny_run, "alice/tiny-student", endpoint=dead, token=TOKEN)
    assert TOKEN not in str(error.value) and tree_digest(tiny_run) == before


def test_token_is_in_no_uploaded_file_and_no_log_line(tiny_run, hub, tmp_path, caplog, capfd, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_DEBUG", True, raising=False)
    caplog.set_level(logging.DEBUG)
    push_student(tiny_run, "alice/tiny-student", adapter_repo_id="alice/tiny-lora", endpoint=hub.endpoint, token=TOKEN)
    space = write_space(str(tmp_path / "space"), "alice/tiny-student", examples=["pasta goal"])
    push_space(space, "alice/tiny-demo", endpoint=hub.endpoint, token=TOKEN)
    out, err = capfd.readouterr()
    assert caplog.records, "nothing was logged: the check would be empty"
    for text in (caplog.text, out, err):
        assert TOKEN not in text and TOKEN[3:] not in text
    for (repo_type, repo_id), repo in hub.hub.repos.items():
        for path, disk in hub.hub.files(repo, repo.refs["main"]).items():
            assert TOKEN.encode() not in Path(disk).read_bytes(), f"{repo_type}/{repo_id}/{path} holds the token"


def test_dry_run_writes_exactly_what_a_push_uploads(tiny_run, hub, tmp_path):
    dry = tmp_path / "dry"
    result = push_student(tiny_run, "alice/tiny-student", dry_run_dir=str(dry), adapter_repo_id="alice/tiny-lora")
    assert result.commit_url is None and not hub.hub.requests  # nothing was sent
    assert set(result.staged) == {"alice/tiny-student", "alice/tiny-lora", "alice/tiny-lora-base"}

    push_student(tiny_run, "alice/tiny-student", adapter_repo_id="alice/tiny-lora", endpoint=hub.endpoint)
    for repo_id, folder in result.staged.items():
        staged = {path: Path(os.path.join(folder, path)).read_bytes() for path in tree_digest(folder)}
        uploaded = {path: content for path, content in uploaded_files(hub, repo_id).items() if path != ".gitattributes"}
        assert staged == uploaded, repo_id


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"repo_id": "no-owner"}, "not a repository id of the form 'owner/name'"),
        ({"repo_id": "alice/bad name"}, "not a repository id"),
        ({"repo_id": "alice/x", "adapter_repo_id": "alice/x"}, "must differ"),
        ({"repo_id": "alice/x", "create_pr": True, "revision": "dev"}, "cannot be combined with revision='dev'"),
    ],
)
def test_bad_push_arguments_fail_before_anything_is_sent(tiny_run, hub, kwargs, message):
    with pytest.raises(ValueError, match=message):
        push_student(tiny_run, endpoint=hub.endpoint, **kwargs)
    assert not hub.hub.requests


def test_the_family_is_pushed_on_request_each_student_with_its_own_card(tiny_run, hub, tmp_path):
    results = json.loads(Path(os.path.join(tiny_run, "results.json")).read_text())
    assert results["cohort"]["depths"] == [3, 2]  # the tiny run: a 3-layer and a 2-layer student
    chosen, other = results["chosen_student"], 1 - results["chosen_student"]
    result = push_student(tiny_run, "alice/tiny-student", endpoint=hub.endpoint, token=TOKEN, family=True)
    assert set(result.family_commit_urls) == {f"alice/tiny-student-student-{other}"}
    pushed = uploaded_files(hub, f"alice/tiny-student-student-{other}")
    local = Path(os.path.join(tiny_run, "students", f"student_{other}", "model.safetensors")).read_bytes()
    assert pushed["model.safetensors"] == local
    card = pushed["README.md"].decode()
    assert f"this model is student {other}, which kept layers {results['cohort']['student_layers'][other]}" in card
    assert f"the cohort's chosen student, by agreement" in card and f"is student {chosen}" in card
    assert f"(this model)**" in card and "alice/tiny-student-student" in card  # its own repository in the snippets
    with pytest.raises(ValueError, match="there is no family to push"):
        one = json.loads(Path(os.path.join(tiny_run, "results.json")).read_text())
        one["cohort"]["num_students"] = 1
        single = tmp_path / "single"
        import shutil

        shutil.copytree(tiny_run, single)
        (single / "results.json").write_text(json.dumps(one))
        push_student(str(single), "alice/x", endpoint=hub.endpoint, family=True)


def test_the_card_shows_the_family_with_its_speed(tiny_run):
    results = json.loads(Path(os.path.join(tiny_run, "results.json")).read_text())
    teacher = next(row for row in results["family"] if row.get("teacher"))
    card = ModelCard.load(os.path.join(tiny_run, "students", "student_1", "README.md"))
    assert "## Accuracy and speed" in card.text
    # the teacher, SetFit on the tiny base: its body's 3 layers and weights, read from its folder
    assert (teacher["layers"], teacher["parameters"]) == (3, folder_parameters(results["base_model"]))
    assert f"| teacher | 3 | {teacher['parameters'] / 1e6:.1f}M |" in card.text
    for k, depth in enumerate([3, 2]):
        row = results["family"][k]
        assert (row["student"], row["layers"], row["dir"]) == (k, depth, f"students/student_{k}")
        shown = f"{row['batch_32_ms']:.1f} | {row['texts_per_s']:.0f} | {teacher['batch_32_ms'] / row['batch_32_ms']:.1f}x |"
        assert shown in card.text, shown
    assert "| **student 1 (this model)** | 2 |" in card.text
    assert card.data.eval_results[0].metric_value == round(results["students"][1]["accuracy"], 4)


def test_push_of_a_folder_that_is_no_run(tmp_path, hub):
    with pytest.raises(FileNotFoundError, match="results.json does not exist: pass the output_dir"):
        push_student(str(tmp_path), "alice/x", endpoint=hub.endpoint)
    assert not hub.hub.requests


# ---- the Space -------------------------------------------------------------------------------------------------------


def test_space_folder_front_matter_and_app(tiny_run, tmp_path, monkeypatch):
    space = write_space(str(tmp_path / "space"), "alice/tiny-student", title="Tiny demo", examples=["pasta goal", " "])
    assert sorted(os.listdir(space)) == ["README.md", "app.py", "requirements.txt", "space_config.json"]
    data = SpaceCard.load(os.path.join(space, "README.md")).data.to_dict()
    assert (data["sdk"], data["app_file"], data["models"], data["title"]) == ("gradio", "app.py", ["alice/tiny-student"], "Tiny demo")
    config = json.loads(Path(os.path.join(space, "space_config.json")).read_text())
    assert config["examples"] == ["pasta goal"]  # blank examples dropped

    # the app itself, pointed at the local student
    monkeypatch.setenv("NANONET_MODEL", os.path.join(tiny_run, "student"))
    monkeypatch.syspath_prepend(space)
    import app

    demo = app.build_demo(config)
    scores = demo.fn("pasta goal today")
    assert set(scores) == set(LABELS) and abs(sum(scores.values()) - 1) < 1e-5
    assert demo.fn("  ") == {}


def test_a_space_of_the_family_lets_the_user_pick_the_student(tiny_run, tmp_path, monkeypatch):
    folders = {f"student {k}": os.path.join(tiny_run, "students", f"student_{k}") for k in (0, 1)}
    space = write_space(str(tmp_path / "space"), folders["student 1"], models=folders, examples=["pasta goal"])
    config = json.loads(Path(os.path.join(space, "space_config.json")).read_text())
    assert config["models"] == folders and config["model"] == folders["student 1"]
    monkeypatch.delenv("NANONET_MODEL", raising=False)
    monkeypatch.syspath_prepend(space)
    import importlib

    import app

    importlib.reload(app)
    demo = app.build_demo(config)
    from transformers import pipeline

    for label, folder in folders.items():
        expected = pipeline("text-classification", model=folder, top_k=None)(["pasta goal today"])[0]
        scores = demo.fn("pasta goal today", label)
        assert scores == pytest.approx({item["label"]: item["score"] for item in expected})
    assert demo.fn("pasta goal today") == demo.fn("pasta goal today", "student 1")  # the default model first
    with pytest.raises(ValueError, match="is not one of models"):
        write_space(str(tmp_path / "bad"), "alice/other", models=folders)


def test_push_space(hub, tmp_path):
    space = write_space(str(tmp_path / "space"), "alice/tiny-student")
    url = push_space(space, "alice/tiny-demo", endpoint=hub.endpoint, token=TOKEN)
    assert url.startswith(f"{hub.endpoint}/spaces/alice/tiny-demo/commit/")
    assert set(uploaded_files(hub, "alice/tiny-demo", "space")) >= {"app.py", "README.md", "requirements.txt", "space_config.json"}
    with pytest.raises(FileNotFoundError, match=r"lacks \['app.py'"):
        push_space(str(tmp_path), "alice/tiny-demo", endpoint=hub.endpoint)


# ---- the CLI --------------------------------------------------------------------------------------------------------


def test_push_cli_dry_run_then_push_with_a_space(tiny_run, hub, tmp_path):
    command = [sys.executable, os.path.join(ROOT, "recipes", "push.py"), "--run_dir", tiny_run, "--repo_id", "alice/cli-student",
               "--space_repo_id", "alice/cli-demo", "--endpoint", hub.endpoint]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1"}
    dry = subprocess.run(command + ["--dry_run_dir", str(tmp_path / "dry")], capture_output=True, text=True, env=env, check=False)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert (tmp_path / "dry" / "alice" / "cli-student" / "model.safetensors").is_file()
    assert (tmp_path / "dry" / "alice" / "cli-demo" / "app.py").is_file() and not hub.hub.requests

    pushed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    assert f"Model: {hub.endpoint}/alice/cli-student/commit/" in pushed.stdout
    assert f"Space: {hub.endpoint}/spaces/alice/cli-demo/commit/" in pushed.stdout
    assert TOKEN not in pushed.stdout + pushed.stderr
    assert all(auth == f"Bearer {TOKEN}" for _, path, auth in hub.hub.requests if path.startswith("/api/"))

    bad = subprocess.run(command[:4] + ["--repo_id", "nobody"], capture_output=True, text=True, env=env, check=False)
    assert bad.returncode == 1 and "error: repo_id='nobody' is not a repository id" in bad.stderr
