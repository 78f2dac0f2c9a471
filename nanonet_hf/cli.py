"""The recipes' command line: `HfArgumentParser` over dataclasses, with `--config FILE.yaml` as defaults.

Every other flag on the command line overrides the YAML; `null`, `None` or an empty value unsets an optional one
(e.g. `--dataset null` to train on files with a config that names a built-in dataset).
"""

import argparse
import dataclasses
import os
import typing

import yaml
from transformers import HfArgumentParser

UNSET = ("", "null", "None")


def parse_config(dataclass_types: tuple, argv: list[str] | None = None) -> tuple:
    """Parse `argv` into instances of `dataclass_types`, with the values of `--config FILE.yaml` as defaults.

    Raises `SystemExit` naming the file for a missing file, a YAML that is not a mapping, or unknown options."""
    parser = HfArgumentParser(dataclass_types)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, rest = pre.parse_known_args(argv)
    if known.config:
        if not os.path.isfile(known.config):
            raise SystemExit(f"--config: no such file {known.config}")
        with open(known.config) as handle:
            values = yaml.safe_load(handle) or {}
        if not isinstance(values, dict):
            raise SystemExit(f"{known.config}: expected a mapping of option: value, got {type(values).__name__}")
        options = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - options)
        if unknown:
            raise SystemExit(f"{known.config}: unknown option(s) {unknown}; see the script's --help.")
        parser.set_defaults(**values)
    parsed = parser.parse_args_into_dataclasses(rest)
    for instance in parsed:  # lets the command line unset a YAML value of an optional string option
        hints = typing.get_type_hints(type(instance))
        for field in dataclasses.fields(instance):
            optional_str = hints.get(field.name) == (str | None)
            if optional_str and getattr(instance, field.name) in UNSET:
                setattr(instance, field.name, None)
    return tuple(parsed)
