# Copyright 2026 The nanonet_hf authors. Licensed under the Apache License, Version 2.0.
# /// script
# dependencies = ["nanonet-hf[hub]"]
# ///
"""
Publish the student of a finished `recipes/train.py` run, with its generated model card, and optionally a Space demo.

    python recipes/push.py --run_dir runs/trec6 --repo_id me/trec6-minilm-student
    python recipes/push.py --run_dir runs/trec6 --repo_id me/trec6-minilm-student --space_repo_id me/trec6-demo
    python recipes/push.py --run_dir runs/trec6 --repo_id me/trec6-minilm --family --space_repo_id me/trec6-demo  # every student
    python recipes/push.py --run_dir runs/trec6 --repo_id me/trec6-minilm-student --dry_run_dir staged/  # sends nothing

The token comes from --token, else HF_TOKEN, else `hf auth login`; it is never written to a file or printed.
--endpoint (or HF_ENDPOINT) points at a self-hosted Hub.
"""

import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from nanonet_hf.deploy.tiers import fastest_tier
from nanonet_hf.hub import PushError, push_space, push_student, write_space
from nanonet_hf.hub.push import family_repo_id
from nanonet_hf.hub.card import read_results


@dataclass
class PushArguments:
    run_dir: str = field(metadata={"help": "output_dir of a finished recipes/train.py run (results.json, student/)."})
    repo_id: str = field(metadata={"help": "Model repository, owner/name; created if missing."})
    private: bool = field(default=False, metadata={"help": "Create the repositories private."})
    revision: str | None = field(default=None, metadata={"help": "Branch to commit to (created from main if missing)."})
    commit_message: str | None = field(default=None, metadata={"help": "Commit message."})
    create_pr: bool = field(default=False, metadata={"help": "Open a pull request instead of committing to main."})
    token: str | None = field(default=None, metadata={"help": "Hub token; default HF_TOKEN or the cached login."})
    endpoint: str | None = field(default=None, metadata={"help": "A self-hosted Hub; default HF_ENDPOINT or huggingface.co."})
    license: str = field(default="apache-2.0", metadata={"help": "License in the card; match the base model and data."})
    adapter_repo_id: str | None = field(
        default=None, metadata={"help": "Also push the LoRA adapter + head there (and its base to --base_repo_id)."}
    )
    base_repo_id: str | None = field(default=None, metadata={"help": "Repository of the adapter's base; default ADAPTER-base."})
    dry_run_dir: str | None = field(
        default=None, metadata={"help": "Write what would be uploaded to DIR/{repo_id}/ (and DIR/{space_repo_id}/); send nothing."}
    )
    family: bool = field(
        default=False,
        metadata={"help": "Also push every other student of the run (students/) to REPO_ID-student-K; the Space then "
                  "lets the user pick the student."},
    )
    space_repo_id: str | None = field(default=None, metadata={"help": "Also write and push a Gradio Space demo there."})
    space_title: str | None = field(default=None, metadata={"help": "Title of the Space; default the model's name."})
    space_tier: str = field(
        default="pytorch",
        metadata={"help": "What serves the Space: 'pytorch', 'onnx', 'onnx-int8', 'static', or 'fastest' (the run's "
                  "fastest exported tier at batch 1)."},
    )


def main(args: PushArguments) -> int:
    try:
        result = push_student(
            args.run_dir,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
            create_pr=args.create_pr,
            token=args.token,
            endpoint=args.endpoint,
            license=args.license,
            adapter_repo_id=args.adapter_repo_id,
            base_repo_id=args.base_repo_id,
            dry_run_dir=args.dry_run_dir,
            family=args.family,
        )
        if args.dry_run_dir is not None:
            for repo_id, folder in result.staged.items():
                print(f"Would upload to {repo_id}: {folder}")
        else:
            print(f"Model: {result.pr_url or result.commit_url}")
            if result.adapter_commit_url:
                print(f"Adapter: {result.adapter_commit_url}\nBase: {result.base_commit_url}")
            for repo_id, url in result.family_commit_urls.items():
                print(f"Student: {url}")

        if args.space_repo_id:
            results = read_results(args.run_dir)
            tier = fastest_tier(results) if args.space_tier == "fastest" else args.space_tier
            if args.family and tier != "pytorch":
                raise ValueError(f"--space_tier {tier}: only the chosen student has faster tiers; drop --family.")
            space = {"title": args.space_title, "examples": results.examples, "license": args.license, "tier": tier}
            if args.family:  # the chosen student at REPO_ID, the others beside it
                depths, chosen = results.depths, results.chosen_student
                space["models"] = {
                    f"student {k} ({depth} layers)": args.repo_id if k == chosen else family_repo_id(args.repo_id, k)
                    for k, depth in enumerate(depths)
                }  # fmt: skip
            if args.dry_run_dir is not None:
                space_dir = write_space(os.path.join(args.dry_run_dir, *args.space_repo_id.split("/")), args.repo_id, **space)
                print(f"Would upload to the Space {args.space_repo_id}: {space_dir}")
            else:
                with tempfile.TemporaryDirectory(prefix="nanonet-space-") as tmp:
                    space_dir = write_space(os.path.join(tmp, "space"), args.repo_id, **space)
                    url = push_space(space_dir, args.space_repo_id, private=args.private, token=args.token, endpoint=args.endpoint)
                print(f"Space: {url}")
    except (PushError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sys.exit(main(HfArgumentParser(PushArguments).parse_args_into_dataclasses()[0]))
