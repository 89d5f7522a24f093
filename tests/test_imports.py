"""The import graph of the project's own modules, read from the source (no module is imported):
imports flow one way between the top-level packages, no two files import each other (imports
inside functions count: they only hide a cycle), and an import inside a function says why."""

import ast
import collections
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Each package may import the ones before it, never one after it.
LAYERS = ("schemas", "annotators", "pipeline", "trainer", "jobs")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files() -> dict[str, Path]:
    return {_module_name(p): p for package in LAYERS for p in sorted((ROOT / package).rglob("*.py"))}


class Import:
    def __init__(self, module: str, target: str, line: int, in_function: bool, reason: bool):
        self.module, self.target, self.line, self.in_function, self.reason = module, target, line, in_function, reason

    def __repr__(self) -> str:
        return f"{self.module}:{self.line} -> {self.target}"


def imports(files: dict[str, Path]) -> list[Import]:
    """Every import statement of every project file; `target` is the project module it reaches (or
    the outside module's name), `reason` whether a comment says why (`_commented`)."""
    found = []
    for module, path in files.items():
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source)
        in_function = {id(node) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for node in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the file's package
                    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{base}".strip(".")
                names = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            line = node.lineno
            reason = _commented(lines, line - 1)
            for name in names:
                target = name
                while target and target not in files:
                    target = target.rpartition(".")[0]
                found.append(Import(module, target or name.split(".")[0], line, id(node) in in_function, reason))
    return found


def _commented(lines: list[str], i: int) -> bool:
    """A comment on line i, or above it over a run of imports, blank lines and comments (one reason
    may cover a block of imports)."""
    if "#" in lines[i]:
        return True
    while i > 0:
        i -= 1
        text = lines[i].strip()
        if text.startswith("#"):
            return True
        if text and not text.startswith(("import ", "from ")):
            return False
    return False


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def package_graph() -> collections.Counter:
    """(importer package, imported package) -> import statements between them (`python -m
    tests.test_imports` prints it, for the architecture notes)."""
    files = project_files()
    edges = {(i.module, i.line, i.module.split(".")[0], i.target.split(".")[0]) for i in imports(files)
             if i.target in files}
    return collections.Counter((a, b) for _, _, a, b in edges if a != b)


def test_no_import_cycle_between_project_files():
    files = project_files()
    edges: dict[str, set[str]] = collections.defaultdict(set)
    for i in imports(files):
        if i.target in files and i.target != i.module and not i.target.startswith(i.module + "."):
            edges[i.module].add(i.target)
    assert cycles(edges) == []


def test_the_cycle_check_finds_a_cycle_hidden_in_a_function():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_packages_import_only_the_layers_below():
    files = project_files()
    rank = {package: i for i, package in enumerate(LAYERS)}
    upward = [i for i in imports(files) if i.target in files
              and rank[i.target.split(".")[0]] > rank[i.module.split(".")[0]]]
    assert upward == []


# What the trainer may take from the pipeline (DESIGN.md): its registry, config loader, hub, image
# tokenizer and shared plumbing, never a stage module: a trainer that imports a stage imports its
# models and executors too.
STAGE_MODULES = ("pipeline.ingest", "pipeline.annotate", "pipeline.score", "pipeline.filter", "pipeline.tokenize")


def test_the_trainer_imports_no_pipeline_stage():
    files = project_files()
    into_stages = [i for i in imports(files) if i.module.startswith(("trainer", "annotators", "schemas"))
                   and i.target in STAGE_MODULES]
    assert into_stages == []


def test_imports_inside_functions_say_why():
    """An import inside a function hides a dependency from the reader (and hid two cycles): it is
    kept only to avoid loading something heavy or optional, with a comment saying so."""
    silent = [i for i in imports(project_files()) if i.in_function and not i.reason]
    assert silent == []


if __name__ == "__main__":
    for (importer, imported), n in sorted(package_graph().items(), key=lambda kv: LAYERS.index(kv[0][0])):
        print(f"{importer:<10} -> {imported:<10} {n:>3} import statements")
