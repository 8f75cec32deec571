"""course_lib's layers: every import (at the top of a module or inside a function) points down the declared order,
and no two modules import each other, directly or around a loop. README.md draws the same order."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Bottom first. A module may import modules of its own layer (without a cycle) or of a layer below it.
LAYERS = [
    ("core", ["course_lib", "course_lib.images"]),  # device choice; tensors -> PNG
    ("data", ["course_lib.data"]),
    ("schedules", ["course_lib.schedules"]),
    ("models", ["course_lib.models"]),
    ("checkpoints", ["course_lib.pretrained"]),
    ("objectives, training, samplers", ["course_lib.losses", "course_lib.batches", "course_lib.distributed",
                                        "course_lib.training", "course_lib.samplers", "course_lib.guidance",
                                        "course_lib.autoregressive", "course_lib.inpainting"]),
    ("pipelines", ["course_lib.generate", "course_lib.outputs", "course_lib.latent", "course_lib.tokens"]),
    ("widgets", ["course_lib.widgets", "course_lib.plotting"]),
    ("metrics", ["course_lib.metrics"]),
    ("recipes", ["course_lib.floors", "course_lib.tasks", "course_lib.recipes", "course_lib.train"]),
    ("evaluation, bench", ["course_lib.evaluation", "course_lib.bench", "course_lib.scale"]),
    ("exercises", ["course_lib.exercises", "course_lib.exercises_denoising", "course_lib.exercises_guidance",
                   "course_lib.exercises_latent", "course_lib.exercises_ar"]),
]


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file of every module of `package` (found under root/package)."""
    names = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports anywhere in its file (functions included)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package this module is in (or is, for __init__)
                anchor = name.split(".")
                anchor = anchor[:len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the module pkg.sub when there is one, else a name from pkg
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import pkg.sub.x` -> the deepest module that exists
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    modules = module_names(root, package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_of(name: str, layers) -> int:
    """Index of the layer whose longest prefix names this module."""
    best, index = -1, None
    for i, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, index = len(prefix), i
    if index is None:
        raise AssertionError(f"{name} is in no layer: add it to LAYERS (and to the README's library section)")
    return index


def upward_imports(graph: dict[str, set[str]], layers) -> list[str]:
    return sorted(f"{a} ({layers[layer_of(a, layers)][0]}) imports {b} ({layers[layer_of(b, layers)][0]})"
                  for a, targets in graph.items() for b in targets if layer_of(b, layers) > layer_of(a, layers))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, found by depth-first search (each reported once, from its smallest module)."""
    found, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                loop = path[path.index(nxt):] + [nxt]
                found.append(loop)
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return found


# ----- course_lib itself -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graph():
    return import_graph(REPO, "course_lib")


def test_no_import_goes_up_the_layers(graph):
    assert upward_imports(graph, LAYERS) == []


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_the_parser_sees_function_level_and_relative_imports(graph):
    assert "course_lib.models.layers" in graph["course_lib.models.unet"]  # from .layers import ...
    assert "course_lib.models.clip" in graph["course_lib.models"]  # inside build_model
    assert "course_lib" in graph["course_lib.widgets.player"]  # from .. import device_of
    assert "course_lib.pretrained" in graph["course_lib.widgets.player"]  # from .. import pretrained
    assert len(graph) > 30


def test_readme_library_table_has_one_row_per_module_in_layer_order():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## The library"):]
    section = section[:section.index("\n## ", 1)]
    rows = [line.split("|") for line in section.splitlines() if line.startswith("| ") and "`" in line]
    listed = [cells[2].strip().strip("`") for cells in rows if len(cells) > 3 and cells[2].strip().startswith("`")]
    wanted = [prefix.removeprefix("course_lib.") for _, prefixes in LAYERS for prefix in prefixes]
    assert listed == wanted


# ----- the checker catches what it is for (a throwaway package with a cycle and an upward import) -------------
@pytest.fixture
def bad_package(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("def f():\n    from pkg import high  # hidden in a function\n")
    (pkg / "high.py").write_text("from .sub import mid\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "mid.py").write_text("import pkg.low\n")
    return tmp_path


def test_checker_finds_a_cycle_through_a_function_level_import(bad_package):
    graph = import_graph(bad_package, "pkg")
    assert graph["pkg.low"] == {"pkg.high"} and graph["pkg.high"] == {"pkg.sub.mid"}
    assert cycles(graph) == [["pkg.high", "pkg.sub.mid", "pkg.low", "pkg.high"]]


def test_checker_finds_an_import_up_the_layers(bad_package):
    layers = [("bottom", ["pkg", "pkg.low", "pkg.sub"]), ("top", ["pkg.high"])]
    assert upward_imports(import_graph(bad_package, "pkg"), layers) == ["pkg.low (bottom) imports pkg.high (top)"]
    with pytest.raises(AssertionError, match="pkg.high is in no layer"):
        upward_imports(import_graph(bad_package, "pkg"), [("bottom", ["pkg.low", "pkg.sub"])])
