"""Print setup.py's install_requires floors as exact pins (``name==floor``), for pip's ``-c``: the second CI leg
installs them, so every floor states a version a test has run on. Names given as arguments are left out (torch:
its floor is the GPU machine's version, and only torch's 2.13 CPU build can be installed here; setup.py says
why)."""

import ast
import re
import sys
from pathlib import Path

tree = ast.parse((Path(__file__).resolve().parents[1] / "setup.py").read_text())
requirements = []
for node in ast.walk(tree):
    if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["install_requires"]:
        requirements += [element.value for element in node.value.elts]
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "append"
          and getattr(node.func.value, "id", None) == "install_requires"):
        requirements.append(node.args[0].value)
for requirement in requirements:
    name, floor = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", requirement).groups()
    if name not in sys.argv[1:]:
        print(f"{name}=={floor}")
