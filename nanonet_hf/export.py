"""Publish one student of a cohort as plain transformers folders.

`export_student` writes, atomically:

- `student/`: the student's adapter merged into its (cut) base, with its own head: a plain
  `AutoModelForSequenceClassification` folder (config with id2label/label2id, safetensors, tokenizer) that loads
  without peft.
- `student_adapter/`: the adapter and head alone, for `AutoPeftModelForSequenceClassification`. Its
  `base_model_name_or_path` points at `student_base/`.
- `student_base/`: the frozen (cut) base with the label space in its config, the base the adapter applies to.

Bias-only students have no PEFT adapter: their export is `student/` alone (the base with the student's bias offsets
added and its head).

The base is the cohort's own frozen base ([`StudentCohort.frozen_base`]), never the checkpoint loaded again: weights
the checkpoint lacked were drawn once when the cohort was built, and a second load would draw them anew, giving an
exported student that is not the one that was evaluated.
"""

import json
import os
import shutil
from dataclasses import dataclass

from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from .cohort import StudentCohort, encoder_layers, student_name
from .files import atomic_directory, replace_directory


@dataclass
class ExportedStudent:
    student: str
    student_dir: str
    adapter_dir: str | None  # None for bias-only students
    base_dir: str | None


def export_student(
    cohort: StudentCohort, student: int | str, output_dir: str, tokenizer: PreTrainedTokenizerBase
) -> ExportedStudent:
    """Export `student` (index or name) of `cohort` to `output_dir/{student,student_adapter,student_base}`.

    The merged model is rebuilt from the saved adapter on a copy of the cohort's frozen base, so the live cohort is
    never touched and the adapter folder is proven loadable. PEFT's `merge_and_unload` takes the head of the ACTIVE
    adapter: a freshly loaded single adapter is the active one, so the merged model cannot pick up another student's
    head.
    """
    name = student_name(student) if isinstance(student, int) else student
    if name not in cohort.student_names:
        raise ValueError(f"Unknown student {name!r}; the cohort has {cohort.student_names}.")
    output_dir = os.path.abspath(output_dir)
    final = ExportedStudent(
        student=name,
        student_dir=os.path.join(output_dir, "student"),
        adapter_dir=os.path.join(output_dir, "student_adapter"),
        base_dir=os.path.join(output_dir, "student_base"),
    )
    if cohort.student_biases is not None:
        return _export_bias_student(cohort, name, output_dir, tokenizer)

    with atomic_directory(os.path.join(output_dir, ".export")) as tmp:
        base_dir, adapter_dir, student_dir = (os.path.join(tmp, part) for part in ("base", "adapter", "student"))

        # the frozen base, cut as the students see it
        base = cohort.frozen_base()
        base.save_pretrained(base_dir)
        tokenizer.save_pretrained(base_dir)

        # the adapter: PEFT saves a non-"default" adapter in a subfolder named after it
        cohort.release_routing()
        cohort.peft_model.save_pretrained(os.path.join(tmp, "adapters"), selected_adapters=[name])
        shutil.move(os.path.join(tmp, "adapters", name), adapter_dir)
        # PEFT's generic card names a local path as base_model; the Hub card replaces it
        peft_card = os.path.join(adapter_dir, "README.md")
        if os.path.exists(peft_card):
            os.remove(peft_card)
        config_path = os.path.join(adapter_dir, "adapter_config.json")
        with open(config_path) as handle:
            adapter_config = json.load(handle)
        adapter_config["base_model_name_or_path"] = final.base_dir
        with open(config_path, "w") as handle:
            json.dump(adapter_config, handle, indent=2)
        tokenizer.save_pretrained(adapter_dir)

        # the merged student
        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
        merged.config.architectures = [type(merged).__name__]
        merged.save_pretrained(student_dir)
        tokenizer.save_pretrained(student_dir)

    # each folder is replaced by a rename: a crash leaves every folder either the old one or the new one, complete
    staged = os.path.join(output_dir, ".export")
    for part, target in (("base", final.base_dir), ("adapter", final.adapter_dir), ("student", final.student_dir)):
        replace_directory(os.path.join(staged, part), target)
    shutil.rmtree(staged, ignore_errors=True)
    return final


def _export_bias_student(
    cohort: StudentCohort, name: str, output_dir: str, tokenizer: PreTrainedTokenizerBase
) -> ExportedStudent:
    """A bias-only student: a copy of the cohort's frozen base, the student's offsets added to its biases, its head."""
    student_dir = os.path.join(output_dir, "student")
    merged = cohort.frozen_base()
    cohort.student_biases.merge_into(encoder_layers(merged), cohort.student_names.index(name))
    heads = cohort.student_heads(name)
    for path, head in heads.items():
        merged.get_submodule(path).load_state_dict(head.state_dict())
    with atomic_directory(student_dir) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    for stale in ("student_adapter", "student_base"):  # from an earlier LoRA export to the same folder
        shutil.rmtree(os.path.join(output_dir, stale), ignore_errors=True)
    return ExportedStudent(student=name, student_dir=student_dir, adapter_dir=None, base_dir=None)
