"""Publish an exported student to the Hub (or a self-hosted Hub-compatible server) with its generated model card.

`push_student(run_dir, "me/my-classifier")` stages what will be uploaded in a temporary folder (the merged student,
its card rendered for the repository id, the learning-curve picture), then `create_repo(exist_ok=True)` and
`upload_folder`. The run folder is only read. With `adapter_repo_id`, the LoRA adapter and head go to their own
repository and the (cut) base they apply to to a third one, so that `AutoPeftModelForSequenceClassification` loads the
adapter from the Hub. With `dry_run_dir`, nothing is sent: the staged folders are written there instead, one per
repository (`dry_run_dir/{repo_id}/`).

The token is passed to `HfApi` only (argument, else `HF_TOKEN`, else the cached login): it is never written to a file
or a log line, and it is scrubbed from error messages.
"""

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field

from huggingface_hub import CommitInfo, HfApi, ModelCard, ModelCardData

from ..deploy.static_student import STATIC_DIR
from ..export import family_dir
from ..files import atomic_directory
from ..results import RunResults
from .card import LEARNING_CURVE_FILE, model_card, read_results, template_path

logger = logging.getLogger(__name__)

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# files of the exported folders that the push renders anew
RENDERED = {"README.md"}


class PushError(RuntimeError):
    """A push failed; the local export is untouched and the same call can be retried."""


@dataclass
class PushResult:
    """Where things went. In a dry run the URLs are None and `staged` lists the folders written."""

    repo_id: str
    commit_url: str | None = None
    pr_url: str | None = None
    adapter_commit_url: str | None = None
    base_commit_url: str | None = None
    staged: dict[str, str] = field(default_factory=dict)  # repo id -> staged folder
    family_commit_urls: dict[str, str] = field(default_factory=dict)  # repo id -> commit URL, with family=True


def check_repo_id(repo_id: str, name: str = "repo_id") -> None:
    if not isinstance(repo_id, str) or not REPO_ID.match(repo_id) or ".." in repo_id or repo_id.endswith((".", "-")):
        raise ValueError(f"{name}={repo_id!r} is not a repository id of the form 'owner/name' (letters, digits, - _ .).")


def _copy_folder(source: str, target: str, skip: set[str] = frozenset()) -> None:
    for name in sorted(os.listdir(source)):
        if name in skip or name.startswith("."):
            continue
        path = os.path.join(source, name)
        if os.path.isdir(path):
            shutil.copytree(path, os.path.join(target, name))
        else:
            shutil.copy2(path, os.path.join(target, name))


def family_repo_id(repo_id: str, student: int) -> str:
    """Where `push_student(..., family=True)` puts student `student` of the family (every student but the chosen one,
    which goes to `repo_id` itself)."""
    return f"{repo_id}-student-{student}"


def stage_student(
    run_dir: str, results: RunResults, target: str, repo_id: str, license: str | None, student: int | None = None
) -> None:
    """The student repository: the merged model, tokenizer, learning curve and the card for `repo_id`; the chosen
    student (`student/`), or student `student` of the family (`students/student_{k}/`)."""
    source = os.path.join(run_dir, "student") if student is None else family_dir(run_dir, student)
    _copy_folder(source, target, skip=RENDERED)
    static = os.path.join(run_dir, STATIC_DIR)
    if student is None and os.path.isdir(static):  # the static tier travels with the student, as `static/`
        os.makedirs(os.path.join(target, "static"))
        _copy_folder(static, os.path.join(target, "static"), skip={"README.md"})
    curve = LEARNING_CURVE_FILE if os.path.isfile(os.path.join(target, LEARNING_CURVE_FILE)) else None
    card = model_card(results, repo_id, learning_curve_file=curve, license=license, student=student)
    card.save(os.path.join(target, "README.md"))


def _short_card(template: str, card_data: ModelCardData, **values) -> ModelCard:
    return ModelCard.from_template(card_data, template_path=template_path(template), **values)


def stage_adapter(run_dir: str, target: str, adapter_repo_id: str, base_repo_id: str, student_repo_id: str, license) -> None:
    """The adapter repository: LoRA weights + head, its config pointing at `base_repo_id` instead of a local path."""
    _copy_folder(os.path.join(run_dir, "student_adapter"), target, skip=RENDERED)
    config_path = os.path.join(target, "adapter_config.json")
    with open(config_path) as handle:
        config = json.load(handle)
    config["base_model_name_or_path"] = base_repo_id
    with open(config_path, "w") as handle:
        json.dump(config, handle, indent=2)
    data = ModelCardData(library_name="peft", base_model=base_repo_id, license=license, pipeline_tag="text-classification", tags=["nanonet", "lora"])
    _short_card("adapter_card.md", data, repo_id=adapter_repo_id, base_repo_id=base_repo_id, student_repo_id=student_repo_id).save(
        os.path.join(target, "README.md")
    )


def stage_base(run_dir: str, target: str, base_repo_id: str, adapter_repo_id: str, license) -> None:
    """The base repository: the frozen (cut) base with the label space, which the adapter applies to."""
    _copy_folder(os.path.join(run_dir, "student_base"), target, skip=RENDERED)
    data = ModelCardData(library_name="transformers", license=license, tags=["nanonet"])
    _short_card("base_card.md", data, repo_id=base_repo_id, adapter_repo_id=adapter_repo_id).save(os.path.join(target, "README.md"))


def _check_run(run_dir: str, with_adapter: bool, family: bool = False) -> RunResults:
    """The run's results, once its folders are known to be complete."""
    results = read_results(run_dir)
    folders = ["student"] + (["student_adapter", "student_base"] if with_adapter else [])
    if family:
        if results.cohort["num_students"] < 2:
            raise ValueError(f"{run_dir} trained one student: there is no family to push; drop family=True.")
        folders += [os.path.relpath(family_dir(run_dir, k), run_dir) for k in range(results.cohort["num_students"])]
    for folder in folders:
        config = "adapter_config.json" if folder == "student_adapter" else "config.json"
        if not os.path.isfile(os.path.join(run_dir, folder, config)):
            raise FileNotFoundError(f"{os.path.join(run_dir, folder)} has no {config}: is {run_dir} the output_dir of a finished run?")
    return results


def scrub_token(message: str, token: str | None) -> str:
    """`message` with `token` masked, for error messages that quote a server's answer."""
    return message.replace(token, "***") if token else message


def upload(
    api: HfApi,
    repo_id: str,
    folder: str,
    *,
    source: str,
    token: str | None,
    message: str,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    repo_type: str = "model",
    **create_kwargs,
) -> CommitInfo:
    """`create_repo(exist_ok=True)`, `create_branch` for a revision other than main, then `upload_folder`.

    Any failure is re-raised as a [`PushError`] that names `source` (the local folder, only read), the repository and
    the server, with the token masked; the cause stays chained.
    """
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, **create_kwargs)
        if revision not in (None, "main"):
            api.create_branch(repo_id, repo_type=repo_type, branch=revision, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id, repo_type=repo_type, folder_path=folder, commit_message=message, revision=revision, create_pr=create_pr
        )
    except Exception as error:
        raise PushError(
            scrub_token(
                f"Pushing {source} to {repo_id} on {api.endpoint} failed: {type(error).__name__}: {error}\n"
                f"Nothing in {source} was changed; run the same push again once the server answers.",
                token,
            )
        ) from error


def push_student(
    run_dir: str,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    license: str | None = "apache-2.0",
    adapter_repo_id: str | None = None,
    base_repo_id: str | None = None,
    dry_run_dir: str | None = None,
    family: bool = False,
) -> PushResult:
    """Push the exported student of `run_dir` (the output_dir of `recipes/train.py`) to the model repo `repo_id`, and
    with `family` every other student of the cohort to its own repository (`{repo_id}-student-{k}`).

    Args:
        run_dir (`str`): holds `results.json`, `student/` (and `student_adapter/`, `student_base/`).
        repo_id (`str`): `owner/name`; created if missing.
        private (`bool`, *optional*, defaults to `False`): create the repository private.
        revision (`str`, *optional*): branch to commit to (created from `main` if missing); default `main`.
        commit_message (`str`, *optional*): defaults to "Upload nanonet_hf student".
        create_pr (`bool`, *optional*, defaults to `False`): open a pull request instead of committing to `main`.
        token (`str`, *optional*): defaults to `HF_TOKEN` or the cached login. Never written anywhere.
        endpoint (`str`, *optional*): a self-hosted Hub; defaults to `HF_ENDPOINT` or huggingface.co.
        license (`str`, *optional*, defaults to `"apache-2.0"`): written in the card; match your base model and data.
        adapter_repo_id (`str`, *optional*): also push the adapter-only folder there, and its base to `base_repo_id`.
        base_repo_id (`str`, *optional*): defaults to `{adapter_repo_id}-base`.
        dry_run_dir (`str`, *optional*): write the staged folders to `dry_run_dir/{repo_id}/` and send nothing.
        family (`bool`, *optional*, defaults to `False`): also push every other student of the run (`students/`), each
            a plain model of its own depth with its card, to [`family_repo_id`]`(repo_id, k)`.

    Returns:
        [`PushResult`] with the commit URL(s) (and the pull request URL with `create_pr`).

    Raises:
        `ValueError` / `FileNotFoundError` before anything is sent, for a bad id or an incomplete run folder;
        [`PushError`] when the server fails or cannot be reached. The run folder is never modified.
    """
    check_repo_id(repo_id)
    if adapter_repo_id is not None:
        check_repo_id(adapter_repo_id, "adapter_repo_id")
        base_repo_id = base_repo_id or f"{adapter_repo_id}-base"
        check_repo_id(base_repo_id, "base_repo_id")
        if len({repo_id, adapter_repo_id, base_repo_id}) < 3:
            raise ValueError(f"repo_id, adapter_repo_id and base_repo_id must differ, got {repo_id}, {adapter_repo_id}, {base_repo_id}.")
    if create_pr and revision not in (None, "main"):
        raise ValueError(f"create_pr opens a pull request against main; it cannot be combined with revision={revision!r}.")
    run_dir = os.path.abspath(run_dir)
    results = _check_run(run_dir, adapter_repo_id is not None, family)
    others = [k for k in range(results.cohort["num_students"]) if k != results.chosen_student] if family else []
    for k in others:
        check_repo_id(family_repo_id(repo_id, k))

    with tempfile.TemporaryDirectory(prefix="nanonet-push-") as staging:  # the run folder is only read
        plan = [(repo_id, os.path.join(staging, "student"))]  # (repository, staged folder)
        if adapter_repo_id is not None:
            plan += [(adapter_repo_id, os.path.join(staging, "adapter")), (base_repo_id, os.path.join(staging, "base"))]
        plan += [(family_repo_id(repo_id, k), os.path.join(staging, f"student_{k}")) for k in others]
        for _, folder in plan:
            os.makedirs(folder)
        stage_student(run_dir, results, plan[0][1], repo_id, license)
        if adapter_repo_id is not None:
            stage_adapter(run_dir, plan[1][1], adapter_repo_id, base_repo_id, repo_id, license)
            stage_base(run_dir, plan[2][1], base_repo_id, adapter_repo_id, license)
        for k, (target_id, folder) in zip(others, plan[len(plan) - len(others) :]):
            stage_student(run_dir, results, folder, target_id, license, student=k)

        if dry_run_dir is not None:
            result = PushResult(repo_id=repo_id)
            with atomic_directory(dry_run_dir) as tmp:
                for target_id, folder in plan:
                    shutil.copytree(folder, os.path.join(tmp, *target_id.split("/")))
            for target_id, _ in plan:
                result.staged[target_id] = os.path.join(os.path.abspath(dry_run_dir), *target_id.split("/"))
            logger.info("Dry run: wrote %s", ", ".join(result.staged.values()))
            return result

        api = HfApi(endpoint=endpoint, token=token)
        message = commit_message or "Upload nanonet_hf student"
        commits = {}
        # the base first: the adapter's config names it, the student's card may name the adapter
        for target_id, folder in reversed(plan):
            commits[target_id] = upload(
                api, target_id, folder, source=run_dir, token=token, message=message, private=private,
                revision=revision, create_pr=create_pr,
            )  # fmt: skip
            logger.info("Pushed %s: %s", target_id, commits[target_id].commit_url)

    main_commit = commits[repo_id]
    return PushResult(
        repo_id=repo_id,
        commit_url=main_commit.commit_url,
        pr_url=main_commit.pr_url,
        adapter_commit_url=commits[adapter_repo_id].commit_url if adapter_repo_id else None,
        base_commit_url=commits[base_repo_id].commit_url if adapter_repo_id else None,
        family_commit_urls={family_repo_id(repo_id, k): commits[family_repo_id(repo_id, k)].commit_url for k in others},
    )
