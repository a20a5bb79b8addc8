"""The project code each stage runs: its module and everything it imports from here.

A stage reruns when one of these files changes and not when another stage's code does;
the Makefile rules and the manifests both take the list from here. Imports are read
from the source (``ast``), so nothing is imported to find them.
"""

from __future__ import annotations

import ast
from collections import deque
from functools import cache
from pathlib import Path

from pipeline.catalogue import Stage
from pipeline.io import file_hash

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "features", "models")


def _module_file(module: str) -> Path | None:
    if module.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(path: Path) -> set[str]:
    """Project modules named by ``path``'s imports (``from a import b`` may name a module
    ``a.b`` or a name in ``a``: both are tried), plus the packages above each."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level or not node.module:
                raise ValueError(f"{path}: relative import; the project imports absolutely, "
                                 "which is what the rebuild rules can follow")
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    parents = {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 1)}
    return {m for m in found | parents if _module_file(m) is not None}


@cache
def module_closure(module: str, leaves: tuple[str, ...] = ()) -> tuple[Path, ...]:
    """Source files of ``module`` and of every project module it imports, transitively.
    Registries that import lazily (the channel table) name classes as ``module:Class``
    strings; those are followed from the modules ``module`` imports directly, so a stage
    that loads channels depends on them (a helper two imports away that loads channels
    by name would not be seen: stages name their channels' module themselves). Modules in
    ``leaves`` are included but their imports are not followed."""
    seen: set[str] = set()
    todo = deque([(module, 0)])  # breadth first: a module is expanded at its least depth
    while todo:
        name, depth = todo.popleft()
        path = _module_file(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        if name in leaves:
            continue
        found = _imported(path) | (_registered(path) if depth <= 1 else set())
        todo.extend((m, depth + 1) for m in found)
    return tuple(sorted(p for m in seen if (p := _module_file(m)) is not None))


def _registered(path: Path) -> set[str]:
    """``"package.module:Class"`` strings in a file: lazily imported classes."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and ":" in node.value and node.value.split(":")[0].split(".")[0] in PACKAGES:
            found.add(node.value.split(":")[0])
    return found


def stage_code(stage: Stage) -> tuple[Path, ...]:
    """The files whose change reruns ``stage``, relative to the repository. The config
    module's own imports are not followed: what they do to a stage (the registered
    channel defaults, say) shows in the values of the config sections it reads, which
    the config stamps record (``pipeline.make``), so adding a channel does not rerun
    ingest."""
    closure = module_closure(f"pipeline.stages.{stage.module}", leaves=("pipeline.config",))
    return tuple(p.relative_to(ROOT) for p in closure)


def code_hashes(stage: Stage) -> dict[str, str]:
    return {str(p): file_hash(ROOT / p) for p in stage_code(stage)}
