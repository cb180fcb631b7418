"""The package's structure, checked from its source: floors that import only downwards, no import circle, and
no module reading another object's private attributes. `docs/architecture.md` draws the floors.

Every import counts, including function-local ones and those under `TYPE_CHECKING`: each is a dependency a
reader must hold in mind.
"""
from __future__ import annotations

import ast
import pathlib
from collections import defaultdict

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "featherlight"

# ground floor first; a room (folder or top-level file) may import only from its own floor or below
FLOORS = {
    "utilities": 0, "__about__": 0, "_aliases": 0, "_logo": 0,
    "io": 1,
    "core": 2, "precision": 2, "profilers": 2, "accelerators": 2,
    "loggers": 3, "strategies": 3, "callbacks": 3, "serve": 3,
    "trainer": 4,
    "tuner": 5, "cli": 5,
    "__init__": 6, "pytorch": 6, "demos": 6, "fabric": 6, "plugins": 6,
    "plot": 3,  # reads metrics.csv (CSVLogger.plot); imports nothing of featherlight
}

# Private names of other libraries' objects that featherlight reads on purpose (torch, numpy, the standard
# library). featherlight's own private attributes are read only by the module that defines them.
FOREIGN_PRIVATE = {
    "_BatchNorm": "torch's batch norm base class (isinstance checks, SyncBatchNorm)",
    "_foreach_copy_": "torch's fused list ops (weight averaging)",
    "_foreach_lerp_": "torch's fused list ops (weight averaging)",
    "_per_optimizer_states": "GradScaler's per-optimizer stage and inf flags (no public accessor)",
    "_rebuild_buckets": "DDP's reducer, prepared by hand for manual optimization as Lightning does",
    "_get_fsdp_state": "FSDP2's state: the unsharded gradients of an open accumulation window",
    "_unsharded_param": "FSDP2's unsharded parameter (same)",
    "_num_samples": "RandomSampler's num_samples argument (None when not given)",
    "_parameters": "nn.Module's own parameter dict (snapshots, finetuning)",
    "_buffers": "nn.Module's own buffer dict (snapshots)",
    "_metadata": "the version metadata torch keeps on state dicts",
    "_get_file_writer": "tensorboard SummaryWriter's writer, flushed by the logger",
    "_reconstruct": "numpy's array unpickling function, allow-listed for safe loading",
    "_exit": "os._exit: a process that must stop at once",
    "_value2member_map_": "the enum's value lookup (signal names)",
    "_replace": "a namedtuple's public copy-with-changes method",
    "_fields": "a namedtuple's public field list",
    "_legacy_state_key": "Callback's (Lightning's) key for older checkpoints",
    "_actions": "argparse's list of a parser's actions (jsonargparse builds on argparse; the CLI reads its options)",
    "_version": "a tensor's in-place edit counter (autograd's; the pitfall check of in-place batch edits)",
    "_is_view": "whether a tensor is a view of another (the same check: a view into a cached dataset)",
    "_attach": "wandb's way to re-attach to a run from another process (spawned DDP ranks), as Lightning uses",
}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: pathlib.Path, module: str, modules: dict) -> set[str]:
    """Every featherlight module ``path`` imports, anywhere in the file."""
    found = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            if not name.startswith("featherlight"):
                continue
            while name and name not in modules:
                name = name.rsplit(".", 1)[0] if "." in name else ""
            if name and name != module:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(p, m, modules) for m, p in modules.items()}


def test_every_room_has_a_floor():
    rooms = {_room(m) for m in _modules()}
    assert rooms <= set(FLOORS), sorted(rooms - set(FLOORS))


def test_imports_never_run_up_a_floor():
    upward = []
    for module, targets in _graph().items():
        for target in targets:
            if target == "featherlight" and _room(module) in ("pytorch",):
                continue  # the package face re-exporting itself
            if FLOORS[_room(target)] > FLOORS[_room(module)]:
                upward.append(f"{module} -> {target}")
    assert not upward, "\n".join(sorted(upward))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_between_modules():
    graph = _graph()
    # a package's face (__init__) re-exporting its own modules is not a dependency of those modules on it
    graph = {m: {t for t in ts if not (m.startswith(t + ".") and _modules()[t].name == "__init__.py")}
             for m, ts in graph.items()}
    assert not _cycles(graph), _cycles(graph)


def test_no_import_circle_between_rooms():
    rooms: dict[str, set[str]] = defaultdict(set)
    for module, targets in _graph().items():
        for target in targets:
            if _room(target) != _room(module) and target != "featherlight":
                rooms[_room(module)].add(_room(target))
    assert not _cycles(dict(rooms)), _cycles(dict(rooms))


def _own_private_names(tree: ast.AST) -> set[str]:
    """Private attribute names a module defines for its own objects (``self._x = ...``, methods, class attributes)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls") \
                and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(item.name)
                elif isinstance(item, (ast.Assign, ast.AnnAssign)):
                    targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                    names.update(t.id for t in targets if isinstance(t, ast.Name))
    return {n for n in names if n.startswith("_")}


def test_no_module_reads_another_objects_private_attributes():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        own = _own_private_names(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
                continue
            value = node.value
            if isinstance(value, ast.Name) and value.id in ("self", "cls"):
                continue
            if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super":
                continue
            if node.attr in own or node.attr in FOREIGN_PRIVATE:
                continue
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, "\n".join(offenders)
