"""Print a pip constraints file pinning every dependency of pyproject.toml with a lower bound (`>=`) to that bound:
the floor install of .ci/run, which proves the bounds are ones the code runs on."""

import re
import sys
import tomllib

with open(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml", "rb") as handle:
    project = tomllib.load(handle)["project"]
for requirement in project["dependencies"]:
    match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][^,;\s]*)\s*", requirement)
    if match:
        print(f"{match.group(1)}=={match.group(2)}")
