"""Print a pip constraints file pinning every dependency of pyproject.toml with a lower bound (`>=`) to that bound,
the required ones and those of the extras that export the deployment formats (onnx, static; the dev extra installs
them): the floor install of .ci/run, which proves the bounds are ones the code runs on."""

import re
import sys
import tomllib

with open(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml", "rb") as handle:
    project = tomllib.load(handle)["project"]
EXTRAS = ("onnx", "static")
requirements = project["dependencies"] + [item for extra in EXTRAS for item in project["optional-dependencies"][extra]]
for requirement in requirements:
    match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][^,;\s]*)\s*(,\s*<[^,;\s]+)?\s*", requirement)
    if match:
        print(f"{match.group(1)}=={match.group(2)}")
