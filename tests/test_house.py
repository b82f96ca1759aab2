"""The house (DESIGN.md): every import goes to the module's own tier or lower, no cycles, pipelines
never import each other, only pipelines draw reports (every room may store files: report.files,
.lock, .parts), only the C++ face loads the extension;
modules stay under 400 lines and functions under 80. Each rule is proven to fire on a synthetic
tree with a planted violation.

Imports are read with ast, function-level ones included, so a lazy import counts like any other.
"""
import ast
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "emofast"
TIERS = {"sites": 1, "validation": 1, "processes": 1, "models": 1, "data": 1, "kernels": 1,
         "report": 1,
         "analysis": 2, "interventions": 2, "sweeps": 2, "discovery": 2, "sae": 2, "quant": 2,
         "eval": 2, "pipelines": 3, "cli": 4, "__main__": 5}   # __main__: `python -m emofast`
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 80
STORAGE = ("files", "lock", "parts")  # report's modules every room may use: files, not reports


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path, modules: set[str]) -> set[str]:
    """Absolute names of the package's own modules that `path` imports (anywhere in the file):
    `from x import y` imports module x.y when there is one, else x."""
    name, pkg = module_name(path, root), root.name
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == pkg}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = here.split(".")[:len(here.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if base.split(".")[0] != pkg:
                continue
            subs = {f"{base}.{a.name}" for a in node.names} & modules
            out |= subs or {base}
    return out


def room(name: str) -> str | None:
    """emofast.sweeps.api -> "sweeps"; the root package itself -> None."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def violations(root: Path) -> list[str]:
    """Every broken rule of the module docstring, one line each."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    known = set(modules) | {f"{root.name}._C"}
    imported = {m: imports(p, root, known) for m, p in modules.items()}
    graph = {m: {i for i in imported[m] if i in modules and i != m} for m in modules}
    out = []
    for m, deps in sorted(graph.items()):
        mine = room(m)
        if mine is None:  # the public API: above every tier
            continue
        for d in sorted(deps):
            theirs = room(d)
            if theirs is None:
                out.append(f"{m} imports the public API {d}: import the room instead")
            elif TIERS.get(theirs, 0) > TIERS.get(mine, 0):
                out.append(f"{m} (tier {TIERS[mine]}) imports {d} (tier {TIERS[theirs]})")
            elif mine == theirs == "pipelines" and _is_pipeline(m) and _is_pipeline(d):
                out.append(f"pipeline {m} imports pipeline {d}")
            elif theirs == "report" and mine not in ("report", "pipelines") \
                    and d.rpartition(".")[2] not in STORAGE:
                out.append(f"{m} imports {d}: only pipelines write reports")
        for i in imported[m]:
            if i == f"{root.name}._C" and m != f"{root.name}.kernels.cpp":
                out.append(f"{m} imports {i}: only kernels.cpp loads the extension")
    out += [f"import cycle: {' -> '.join(c)}" for c in _cycles(graph)]
    rooms = {}
    for m, deps in graph.items():
        if room(m):
            rooms.setdefault(room(m), set()).update(room(d) for d in deps if room(d) not in
                                                    (None, room(m)))
    out += [f"room cycle: {' -> '.join(c)}" for c in _cycles(rooms)]
    return out


def _is_pipeline(name: str) -> bool:
    last = name.split(".")[-1]
    return room(name) == "pipelines" and last != "pipelines" and not last.startswith("_")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp) + [sorted(comp)[0]])

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def sizes(root: Path) -> list[str]:
    out = []
    for p in sorted(root.rglob("*.py")):
        text = p.read_text()
        if (n := text.count("\n")) > MAX_MODULE_LINES:
            out.append(f"{p.relative_to(root.parent)}: {n} lines (max {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    out.append(f"{p.relative_to(root.parent)}: {node.name} is {n} lines "
                               f"(max {MAX_FUNCTION_LINES})")
    return out


def test_the_house_keeps_its_rules():
    assert violations(PACKAGE) == []


def test_modules_and_functions_stay_small():
    assert sizes(PACKAGE) == []


def test_every_room_is_a_tiered_package():
    rooms = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    rooms |= {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert rooms <= set(TIERS), rooms - set(TIERS)


def test_tests_mirror_the_tree():
    tests = Path(__file__).parent
    for sub in tests.iterdir():
        if sub.is_dir() and sub.name != "__pycache__":
            assert (PACKAGE / sub.name).is_dir(), f"tests/{sub.name} mirrors no room of emofast"


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "emofast"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


GOOD = {"__init__.py": "from .sweeps import api\n", "sites.py": "import torch\n",
        "sweeps/__init__.py": "", "sweeps/api.py": "from ..sites import Scope\n",
        "pipelines/__init__.py": "", "pipelines/_config.py": "",
        "pipelines/demo.py": "from ._config import option\nfrom ..sweeps import api\n"
                             "from .. import report\n",
        "report/__init__.py": "", "report/files.py": "",
        "cli/__init__.py": "from ..pipelines import demo\n"}


@pytest.mark.parametrize("planted, found", [
    ({"sites.py": "from .sweeps.api import sweep\n"},
     "emofast.sites (tier 1) imports emofast.sweeps.api (tier 2)"),
    ({"sweeps/api.py": "def f():\n    from ..pipelines import demo\n"},  # lazy counts too
     "emofast.sweeps.api (tier 2) imports emofast.pipelines.demo (tier 3)"),
    ({"pipelines/other.py": "from . import demo\n"},
     "pipeline emofast.pipelines.other imports pipeline emofast.pipelines.demo"),
    ({"sweeps/store.py": "from .api import x\n", "sweeps/api.py": "from .store import y\n"},
     "import cycle: emofast.sweeps.api -> emofast.sweeps.store -> emofast.sweeps.api"),
    ({"eval/__init__.py": "from ..sweeps import api\n",
      "sweeps/api.py": "import emofast.eval\n"}, "room cycle: eval -> sweeps -> eval"),
    ({"sweeps/api.py": "from emofast import sweeps\nfrom .. import Model\n"},
     "emofast.sweeps.api imports the public API emofast"),
    ({"sweeps/api.py": "from ..report import plots\n", "report/plots.py": ""},
     "only pipelines write reports"),
    ({"sweeps/api.py": "import emofast._C\n"}, "only kernels.cpp loads the extension"),
])
def test_a_planted_violation_is_found(tmp_path, planted, found):
    assert violations(_tree(tmp_path, GOOD)) == []
    report = violations(_tree(tmp_path, {**GOOD, **planted}))
    assert any(found in line for line in report), report


def test_oversized_code_is_found(tmp_path):
    root = _tree(tmp_path, {"sites.py": "def f():\n" + "    x = 1\n" * 80 + "\n" * 400,
                            "models.py": "def g():\n" + "    x = 1\n" * 79})
    assert sizes(root) == ["emofast/sites.py: 481 lines (max 400)",
                           "emofast/sites.py: f is 81 lines (max 80)"]


def test_no_module_is_shadowed_by_a_name_of_its_package():
    """`import emofast.x.y as m` must give the module: no package exports a function or class
    under the name of one of its own modules."""
    import importlib
    import pkgutil

    import emofast

    shadowed = []
    for info in pkgutil.walk_packages(emofast.__path__, "emofast."):
        if info.name.endswith(("._C", ".__main__")):  # the extension; a script entry point
            continue
        module = importlib.import_module(info.name)
        parent, _, name = info.name.rpartition(".")
        if getattr(importlib.import_module(parent), name) is not module:
            shadowed.append(info.name)
    assert shadowed == []
