"""Which encoder layers each student keeps and which of them it adapts: the cohort's layer plan, read from the config
alone, before any weight is loaded.

Students may differ in depth ("model views" of one base, as DisCo's 2/4/6-layer students): `student_layers` gives one
entry per student, a depth (the first N layers) or layer indices, or one entry that every student takes. The cohort's
base is cut to the union of the students' layers, and student k's rows go through its own layers only
([`nanonet_hf.routing`]); its export is a plain model of its own depth.

    student_layers   meaning (on a 6-layer base)
    None             every student keeps all 6 layers
    3 or "3"         every student keeps layers 0, 1, 2
    "0,2,4"          every student keeps layers 0, 2, 4 (one entry, taken by every student)
    [6, 3]           student 0 keeps all 6 layers, student 1 the first 3 (one entry per student)
    [6, "0,2,4"]     student 0 keeps all 6 layers, student 1 layers 0, 2, 4
    [[0, 1, 2, 3, 4, 5], [0, 2, 4]]   the same, as lists

`adapter_layers` places the adapters: a count N puts them on each student's top N layers, indices name layers of the
cut base (each student adapts those among its own). The layers below the first adapted layer, and below the first
layer that some student skips, are a trunk that runs once for all students.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from .architectures import Architecture, architecture_of


def _layer_numbers(text: str, name: str) -> list[int]:
    parts = [part.strip() for part in text.replace(" ", ",").split(",") if part.strip()]
    try:
        return [int(part) for part in parts]
    except ValueError:
        raise ValueError(f"{name} must be a layer count like '3' or layer indices like '0,2,4', got {text!r}") from None


UNSET = ("", "null", "None")  # what the command line and YAML write for "not set"


def parse_layer_choice(value: int | str | Sequence[int] | None, name: str = "adapter_layers") -> int | list[int] | None:
    """Read one layer choice (`adapter_layers`) from a config: `None`, a count (`2` or `"2"`) or indices (`[1, 2]` or
    `"1,2"`)."""
    if isinstance(value, str) and value.strip() in UNSET:
        return None
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, str):
        numbers = _layer_numbers(value, name)
        return numbers[0] if len(numbers) == 1 and "," not in value else numbers
    return [int(index) for index in value]


def parse_student_layers(value) -> list[int | list[int]] | None:
    """Read `student_layers` from a config (Python, YAML or the command line, where every value is a string): `None`,
    or a list of entries, each a depth (`int`) or layer indices (`list[int]`). One entry is taken by every student."""
    if isinstance(value, (int, str)):
        value = [value]
    if value is None or (len(value) == 1 and isinstance(value[0], str) and value[0].strip() in UNSET):
        return None

    def entry(item) -> int | list[int]:
        if isinstance(item, bool):
            raise ValueError(f"student_layers entries are depths or layer indices, got {item!r}")
        if isinstance(item, int):
            return item
        if isinstance(item, str):
            choice = parse_layer_choice(item, "student_layers")
            if choice is None or (isinstance(choice, list) and not choice):
                raise ValueError(f"student_layers has an empty entry {item!r}")
            return choice
        if isinstance(item, Sequence):
            return [int(index) for index in item]
        raise ValueError(f"student_layers entries are depths or layer indices, got {item!r}")

    entries = [entry(item) for item in value]
    if not entries:
        raise ValueError("student_layers is an empty list; leave it unset to keep every layer")
    return entries


def _check_layer_indices(name: str, indices: Sequence[int], num_layers: int, context: str) -> list[int]:
    """`indices` as a list, or a ValueError naming the option `name` unless they are distinct, increasing and in
    0..num_layers−1."""
    chosen = list(indices)
    bad = [index for index in chosen if not 0 <= index < num_layers]
    if not chosen or bad or len(set(chosen)) != len(chosen) or chosen != sorted(chosen):
        raise ValueError(
            f"{name}={chosen} must be distinct increasing layer indices in 0..{num_layers - 1} ({context})"
        )
    return chosen


def select_layers(
    num_layers: int, choice: int | Sequence[int] | None, architecture: Architecture | None = None, *, name: str = "student_layers"
) -> list[int]:
    """Indices of the layers to keep out of `num_layers`: a depth N keeps the first N, a list keeps those."""
    if choice is None:
        return list(range(num_layers))
    if isinstance(choice, int):
        if not 1 <= choice <= num_layers:
            raise ValueError(f"{name}={choice} must be between 1 and the base's {num_layers} layers")
        return list(range(choice))
    kept = _check_layer_indices(name, choice, num_layers, f"the base has {num_layers} layers")
    if architecture is not None and architecture.first_layer_fixed and kept[0] != 0:
        raise ValueError(
            f"{name}={kept} drops layer 0, which {architecture.name} builds differently from the others (no "
            "attention LayerNorm): a cut base must keep it, or its export would reload another model."
        )
    return kept


@dataclass(frozen=True)
class LayerPlan:
    """The layers of a cohort.

    Attributes:
        kept (`list[int]`): the base's layers that the cohort's cut base keeps: every layer some student keeps.
        students (`list[list[int]]`): per student, the base's layers it keeps.
        adapted (`list[list[int]]`): per student, the positions (in the cut base) of the layers it adapts.
    """

    kept: list[int]
    students: list[list[int]]
    adapted: list[list[int]]

    @property
    def num_students(self) -> int:
        return len(self.students)

    @property
    def positions(self) -> list[list[int]]:
        """Per student, the positions in the cut base of the layers it keeps."""
        return [[self.kept.index(layer) for layer in layers] for layers in self.students]

    @property
    def depths(self) -> list[int]:
        return [len(layers) for layers in self.students]

    @property
    def mixed(self) -> bool:
        """Whether some student skips a layer of the cut base (students of different depths or layers)."""
        return any(layers != self.kept for layers in self.students)

    def present(self) -> list[list[int] | None]:
        """Per position of the cut base, the students whose rows go through it, or `None` when all do."""
        found = []
        for position in range(len(self.kept)):
            students = [k for k, positions in enumerate(self.positions) if position in positions]
            found.append(None if len(students) == self.num_students else students)
        return found

    @property
    def first_split(self) -> int:
        """The first position of the cut base that some student skips (its length when none is skipped)."""
        return next((p for p, students in enumerate(self.present()) if students is not None), len(self.kept))

    @property
    def uniform_adapted(self) -> list[int] | None:
        """The adapted positions when every student adapts the same ones, else `None`."""
        return self.adapted[0] if all(adapted == self.adapted[0] for adapted in self.adapted) else None


def plan_layers(
    config: PretrainedConfig, student_layers, adapter_layers, num_students: int
) -> tuple[Architecture, LayerPlan]:
    """The architecture and layer plan of a cohort of `num_students` on a base with `config`; raises, naming the
    option and the student, for an unsupported architecture or a plan it cannot take, before any weight is loaded."""
    architecture = architecture_of(config)
    total = config.num_hidden_layers
    entries = parse_student_layers(student_layers)
    if entries is None:
        students = [list(range(total))] * num_students
    else:
        if len(entries) not in (1, num_students):
            raise ValueError(
                f"student_layers={student_layers!r} gives {len(entries)} entries, one per student, but num_students is "
                f"{num_students}. Give one entry per student (a depth or layer indices), or one entry that every "
                "student takes (e.g. '0,2,4' or [[0, 2, 4]] for layer indices)."
            )
        entries = entries * num_students if len(entries) == 1 else entries
        where = (lambda k: "student_layers") if len(set(map(str, entries))) == 1 else (lambda k: f"student_layers[{k}]")
        students = [select_layers(total, entry, architecture, name=where(k)) for k, entry in enumerate(entries)]
    kept = sorted(set().union(*map(set, students)))
    plan = LayerPlan(kept=kept, students=students, adapted=[])
    choice = parse_layer_choice(adapter_layers, "adapter_layers")
    adapted = []
    for k, positions in enumerate(plan.positions):
        student = f"student {k}'s" if plan.mixed else "student's"
        if choice is None:
            adapted.append(positions)
        elif isinstance(choice, int):
            if not 1 <= choice <= len(positions):
                raise ValueError(f"adapter_layers={choice} must be between 1 and the {student} {len(positions)} layers")
            adapted.append(positions[len(positions) - choice :])
        else:
            _check_layer_indices("adapter_layers", choice, len(kept), f"the cut base has {len(kept)} layers after student_layers")
            mine = [position for position in positions if position in choice]
            if not mine:
                raise ValueError(
                    f"adapter_layers={choice} holds none of student {k}'s layers (positions {positions} of the cut "
                    "base): every student needs an adapted layer."
                )
            adapted.append(mine)
    return architecture, LayerPlan(kept=kept, students=students, adapted=adapted)


def encoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The `nn.ModuleList` of a classification model's encoder layers, where the architecture table says they are."""
    architecture = architecture_of(model.config)
    layers = model.get_submodule(architecture.layers)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{architecture.layers} of {type(model).__name__} is not the list of encoder layers.")
    return layers


def keep_layers(model: PreTrainedModel, kept: Sequence[int]) -> None:
    """Cut `model` in place to the encoder layers `kept` (positions in its layer list), and the config's per-layer
    settings with them (`layer_types` and the like), so that the cut model saves and reloads as itself."""
    layers = encoder_layers(model)
    if len(kept) < len(layers):
        kept_modules = [layers[index] for index in kept]
        del layers[:]
        layers.extend(kept_modules)
        for name in architecture_of(model.config).layer_config:
            setattr(model.config, name, [getattr(model.config, name)[index] for index in kept])
        model.config.num_hidden_layers = len(kept)
