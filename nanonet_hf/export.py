"""Publish the students of a cohort as plain transformers folders, each of its own depth.

`export_student` writes one student, atomically:

- `student/`: the student's adapter merged into its (cut) base, with its own head: a plain
  `AutoModelForSequenceClassification` folder (config with id2label/label2id, safetensors, tokenizer) that loads
  without peft.
- `student_adapter/`: the adapter and head alone, for `AutoPeftModelForSequenceClassification`. Its
  `base_model_name_or_path` points at `student_base/`.
- `student_base/`: the frozen base cut to the student's own layers, with the label space in its config: the base the
  adapter applies to.

`export_family` writes every student of the cohort as `students/student_{k}/`, a plain folder like `student/`.

A student that keeps fewer layers than the cohort's cut base (students of different depths) is exported as a model of
its own layers: `num_hidden_layers` and the per-layer config (ModernBERT's `layer_types`) follow the cut, and its
adapter's layer numbers are renumbered to match. Bias-only students have no PEFT adapter: their export is the plain
folder alone (the base with the student's bias offsets added and its head).

The base is the cohort's own frozen base ([`frozen_base`]), never the checkpoint loaded again: weights
the checkpoint lacked were drawn once when the cohort was built, and a second load would draw them anew, giving an
exported student that is not the one that was evaluated.
"""

import copy
import json
import os
import re
import shutil
from dataclasses import dataclass

import safetensors.torch
import torch
from peft import PeftModel
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from .cohort import StudentCohort, student_name
from .files import atomic_directory, replace_directory
from .layer_plan import encoder_layers, keep_layers

FAMILY_DIR = "students"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass
class ExportedStudent:
    student: str
    student_dir: str
    adapter_dir: str | None  # None for bias-only students
    base_dir: str | None


def family_dir(output_dir: str, student: int) -> str:
    """Where `export_family` writes student `student`."""
    return os.path.join(output_dir, FAMILY_DIR, student_name(student))


def _index(cohort: StudentCohort, student: int | str) -> int:
    name = student_name(student) if isinstance(student, int) else student
    if name not in cohort.student_names:
        raise ValueError(f"Unknown student {name!r}; the cohort has {cohort.student_names}.")
    return cohort.student_names.index(name)


def export_student(
    cohort: StudentCohort, student: int | str, output_dir: str, tokenizer: PreTrainedTokenizerBase
) -> ExportedStudent:
    """Export `student` (index or name) of `cohort` to `output_dir/{student,student_adapter,student_base}`.

    The merged model is rebuilt from the saved adapter on a copy of the cohort's frozen base, so the live cohort is
    never touched and the adapter folder is proven loadable. PEFT's `merge_and_unload` takes the head of the ACTIVE
    adapter: a freshly loaded single adapter is the active one, so the merged model cannot pick up another student's
    head.
    """
    k = _index(cohort, student)
    name = cohort.student_names[k]
    output_dir = os.path.abspath(output_dir)
    final = ExportedStudent(
        student=name,
        student_dir=os.path.join(output_dir, "student"),
        adapter_dir=os.path.join(output_dir, "student_adapter"),
        base_dir=os.path.join(output_dir, "student_base"),
    )
    if cohort.student_biases is not None:
        with atomic_directory(final.student_dir) as tmp:
            _save(_merged_bias_student(cohort, k), tokenizer, tmp)
        for stale in ("student_adapter", "student_base"):  # from an earlier LoRA export to the same folder
            shutil.rmtree(os.path.join(output_dir, stale), ignore_errors=True)
        return ExportedStudent(student=name, student_dir=final.student_dir, adapter_dir=None, base_dir=None)

    with atomic_directory(os.path.join(output_dir, ".export")) as tmp:
        base_dir, adapter_dir, student_dir = (os.path.join(tmp, part) for part in ("base", "adapter", "student"))
        base = frozen_base(cohort, k)  # cut to the student's own layers
        _save(base, tokenizer, base_dir)
        _save_adapter(cohort, k, adapter_dir, base_model_name_or_path=final.base_dir)
        tokenizer.save_pretrained(adapter_dir)
        _save(_merge(base, adapter_dir), tokenizer, student_dir)

    # each folder is replaced by a rename: a crash leaves every folder either the old one or the new one, complete
    staged = os.path.join(output_dir, ".export")
    for part, target in (("base", final.base_dir), ("adapter", final.adapter_dir), ("student", final.student_dir)):
        replace_directory(os.path.join(staged, part), target)
    shutil.rmtree(staged, ignore_errors=True)
    return final


def export_family(cohort: StudentCohort, output_dir: str, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Write every student of `cohort` as a plain transformers folder of its own depth, `output_dir/students/student_{k}`
    (written whole in a temporary folder, then moved into place); returns the folders, in student order."""
    output_dir = os.path.abspath(output_dir)
    with atomic_directory(os.path.join(output_dir, FAMILY_DIR)) as tmp:
        for k, name in enumerate(cohort.student_names):
            folder = os.path.join(tmp, name)
            if cohort.student_biases is not None:
                _save(_merged_bias_student(cohort, k), tokenizer, folder)
                continue
            adapter_dir = os.path.join(tmp, f".{name}-adapter")
            _save_adapter(cohort, k, adapter_dir)
            _save(_merge(frozen_base(cohort, k), adapter_dir), tokenizer, folder)
            shutil.rmtree(adapter_dir)
    return [family_dir(output_dir, k) for k in range(cohort.num_students)]


def frozen_base(cohort: StudentCohort, student: int | None = None) -> PreTrainedModel:
    """A plain classification model of the cohort's (cut) config holding its frozen base weights (including any drawn
    at load), with the base's own head: what the students' adapters apply to. With `student`, cut further to that
    student's own layers."""
    model = AutoModelForSequenceClassification.from_config(copy.deepcopy(cohort.config))
    model.load_state_dict(plain_state_dict(cohort.peft_model), strict=True)
    model.config.architectures = [type(model).__name__]
    if student is not None:
        keep_layers(model, cohort.plan.positions[student])
    return model.eval()


def plain_state_dict(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """The frozen base's weights under the names of the plain model: PEFT's LoRA weights and head copies left out,
    its `base_layer` / `original_module` wrappers unwrapped. The export loads them strictly into a fresh model of the
    cut config, so a name this misses fails loudly."""
    plain = {}
    for name, tensor in peft_model.get_base_model().state_dict().items():
        parts = name.split(".")
        if any(part.startswith("lora_") for part in parts) or "modules_to_save" in parts:
            continue
        plain[".".join(part for part in parts if part not in ("base_layer", "original_module"))] = tensor
    return plain


def _save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: str) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _merge(base: PreTrainedModel, adapter_dir: str) -> PreTrainedModel:
    """The adapter of `adapter_dir` merged into `base` (consumed), as a plain model."""
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.config.architectures = [type(merged).__name__]
    return merged


def _save_adapter(cohort: StudentCohort, k: int, folder: str, base_model_name_or_path: str | None = None) -> None:
    """Save student k's adapter and head to `folder` as PEFT writes it, for a base of the student's own layers: a
    student that skips layers of the cohort's cut base gets its layer numbers renumbered (its weights' names and its
    config's `layers_to_transform`)."""
    name = cohort.student_names[k]
    cohort.release_routing()
    scratch = f"{folder}.peft"
    cohort.peft_model.save_pretrained(scratch, selected_adapters=[name])  # PEFT saves a non-"default" one in a subfolder
    shutil.move(os.path.join(scratch, name), folder)
    shutil.rmtree(scratch)
    peft_card = os.path.join(folder, "README.md")  # PEFT's generic card names a local path as base_model
    if os.path.exists(peft_card):
        os.remove(peft_card)
    config_path = os.path.join(folder, "adapter_config.json")
    with open(config_path) as handle:
        adapter_config = json.load(handle)
    if base_model_name_or_path is not None:
        adapter_config["base_model_name_or_path"] = base_model_name_or_path
    positions = cohort.plan.positions[k]
    if len(positions) < len(cohort.plan.kept):
        layers = re.escape(cohort.architecture.layers)
        pattern = re.compile(rf"(^|\.)({layers})\.(\d+)\.")
        weights_path = os.path.join(folder, ADAPTER_WEIGHTS)
        weights = safetensors.torch.load_file(weights_path)
        renumbered = {
            pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}.{positions.index(int(m.group(3)))}.", key): tensor
            for key, tensor in weights.items()
        }
        safetensors.torch.save_file(renumbered, weights_path, metadata={"format": "pt"})
        adapted = adapter_config.get("layers_to_transform")
        if adapted is not None:
            adapter_config["layers_to_transform"] = [positions.index(position) for position in adapted]
    with open(config_path, "w") as handle:
        json.dump(adapter_config, handle, indent=2)


def _merged_bias_student(cohort: StudentCohort, k: int) -> PreTrainedModel:
    """A bias-only student: a copy of the cohort's frozen base cut to its layers, its offsets added, its head."""
    merged = frozen_base(cohort, k)
    cohort.student_biases.merge_into(encoder_layers(merged), k, positions=cohort.plan.positions[k])
    for path, head in cohort.student_heads(cohort.student_names[k]).items():
        merged.get_submodule(path).load_state_dict(head.state_dict())
    return merged
