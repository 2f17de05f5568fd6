"""The package as a library: no process-wide side effects, and a module graph without cycles."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kaem"


def test_using_the_library_changes_nothing_process_wide(tmp_path: Path) -> None:
    # Import, sample, train and evaluate in a fresh process; the environment, PyTorch's
    # threads and its global random state must be as they were.
    code = f"""
import os, sys, torch
import torch._dynamo  # imported by any torch.optim optimizer; it sets TORCHINDUCTOR_CACHE_DIR
sys.path.insert(0, {str(Path(__file__).parent)!r})
env, threads, rng = dict(os.environ), torch.get_num_threads(), torch.random.get_rng_state()
import kaem
from helpers import TINY_MODEL, tiny_images
from kaem.config import TrainConfig, from_dict
model = kaem.build_model(TINY_MODEL)
g = torch.Generator().manual_seed(0)
model.prior.sample(10_000, g)
model.generate(8, g)
cfg = from_dict(TrainConfig, {{"batch_size": 16, "max_steps": 2, "importance": {{"n_samples": 8}}}})
kaem.train(model, tiny_images(), cfg, {str(tmp_path)!r}, progress=False)
assert dict(os.environ) == env, set(os.environ.items()) ^ set(env.items())
assert torch.get_num_threads() == threads
assert torch.equal(torch.random.get_rng_state(), rng)
print("unchanged")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and "unchanged" in proc.stdout, proc.stderr[-3000:]


def _imports(path: Path, module: str) -> set[str]:
    """The kaem modules ``module`` (at ``path``) imports, at module level or inside functions."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {name for name in found if name.startswith("kaem")}


def test_the_modules_import_each_other_without_a_cycle() -> None:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {
        m: {r for r in map(resolve, _imports(p, m)) if r and r != m} for m, p in modules.items()
    }
    # A package's __init__ that only hands names on stands for its modules: an edge into it
    # is an edge into the module it re-exports, so cycles through faces are real cycles.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = [*stack[stack.index(n) :], n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_module_imports_another_modules_private_names() -> None:
    offences = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kaem"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private and not all(n == "__version__" for n in private):
                    offences.append(f"{path.relative_to(PACKAGE)}: {node.module} {private}")
    assert offences == []


def test_nothing_reads_the_environment_at_import() -> None:
    offences = []
    for path in PACKAGE.rglob("*.py"):
        for stmt in ast.parse(path.read_text()).body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            text = ast.unparse(stmt)
            if "os.environ" in text or "getenv" in text:
                offences.append(f"{path.relative_to(PACKAGE)}:{stmt.lineno}")
    assert offences == []
