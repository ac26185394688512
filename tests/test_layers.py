"""hfexport's modules import one another without a circle.

Every import counts, the ones inside functions and under ``if TYPE_CHECKING:`` included: a circle hidden in a
function still ties two modules together (neither can be understood, tested or moved without the other). The
imports are read with :mod:`ast`, so this needs nothing but the standard library.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hfexport"


def _module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(current: str, is_package: bool, level: int, module: str | None) -> str:
    base = current.split(".") if is_package else current.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: the hfexport modules it imports}``, every ``import`` statement of every module counted."""
    modules = {_module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module) if node.level else (node.module or "")
                # ``from . import gpt2`` names the module ``gpt2``; ``from .base import X`` the module ``base``
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("hfexport"):
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (``[a, b, ..., a]``), or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_the_checker_finds_a_function_level_circle(tmp_path: Path) -> None:
    package = tmp_path / "hfexport"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import x\n")
    (package / "b.py").write_text("def f():\n    from .a import y\n")
    (package / "c.py").write_text("from . import a\n")
    assert find_cycle(import_graph(package)) == ["hfexport.a", "hfexport.b", "hfexport.a"]


def test_hfexport_has_no_import_circle() -> None:
    graph = import_graph()
    assert graph.get("hfexport.io.directory"), "the package's imports were not read"
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_writer_gets_the_tokenizer_files_from_its_caller() -> None:
    """The writer writes the files it is given: it imports no tokenizer code, directly or through another module."""
    graph = import_graph()
    assert "hfexport.tokenizers.tokenizer" not in _reachable(graph, "hfexport.io.directory")


def test_the_writer_only_assembles_a_directory() -> None:
    """Path policy, temporaries, liveness and the publish live apart from the writer (issue 19 §4); their public
    names stay importable from ``hfexport.io.directory``."""
    from hfexport.io import directory as writer

    homes = {
        "check_output_path": "hfexport.io.outputpath",
        "check_export_root": "hfexport.io.outputpath",
        "output_path_text": "hfexport.io.outputpath",
        "replace_refusal": "hfexport.io.outputpath",
        "make_temporary": "hfexport.io.temporaries",
        "remove_temporary": "hfexport.io.temporaries",
        "release_temporary": "hfexport.io.temporaries",
        "pointer_temporary": "hfexport.io.temporaries",
        "clean_stale_temporaries": "hfexport.io.temporaries",
        "interrupt_outcome": "hfexport.io.publish",
        "note_interrupt": "hfexport.io.publish",
    }
    assert {name: getattr(writer, name).__module__ for name in homes} == homes
    graph = import_graph()
    for module in (
        "hfexport.io.outputpath",
        "hfexport.io.temporaries",
        "hfexport._util.liveness",
        "hfexport.io.publish",
    ):
        assert "hfexport.io.directory" not in _reachable(graph, module), f"{module} depends on the writer"


#: The most lines a function's body may span, its docstring excluded (issue 19 §6: a longer one is split where a name
#: explains the parts).
MAX_FUNCTION_LINES = 80
#: Functions allowed past the limit for now, with why (``"module:Qualified.name"``). Empty: every function fits.
LONG_FUNCTIONS_ALLOWED: dict[str, str] = {}


def body_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the end of the last one (blank and comment lines
    between them count; the signature, decorators and the docstring do not)."""
    body = function.body
    first = body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        body = body[1:]
    if not body:
        return 0
    return (body[-1].end_lineno or body[-1].lineno) - body[0].lineno + 1


def long_functions(package: Path = PACKAGE, limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    """``{"module:Qualified.name": body lines}`` of every function (methods and nested ones too) past ``limit``."""
    found: dict[str, int] = {}

    def visit(node: ast.AST, module: str, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if body_lines(child) > limit:
                    found[f"{module}:{prefix}{child.name}"] = body_lines(child)
                visit(child, module, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, module, f"{prefix}{child.name}.")
            else:
                visit(child, module, prefix)

    for path in sorted(package.rglob("*.py")):
        visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), _module_name(path, package), "")
    return found


def test_the_length_check_counts_code_not_docstrings(tmp_path: Path) -> None:
    package = tmp_path / "hfexport"
    package.mkdir()
    doc = '    """' + "\n".join(["A long docstring."] * 200) + '"""\n'
    code = "".join(f"    x{i} = {i}\n" for i in range(81))
    (package / "m.py").write_text(
        f"def documented():\n{doc}    return 1\n\n\nclass C:\n    def method(self):\n{code.replace('    ', '        ')}"
        f"\n\ndef outer():\n    def inner():\n{code.replace('    ', '        ')}    return inner\n"
    )
    assert long_functions(package) == {"hfexport.m:C.method": 81, "hfexport.m:outer": 83, "hfexport.m:outer.inner": 81}


def test_no_function_over_80_lines() -> None:
    """No function body (docstring excluded) spans more than 80 lines, so that a long one is split where a name
    explains its parts; an entry of the allow-list that is no longer long must leave it."""
    found = long_functions()
    unexplained = {name: lines for name, lines in found.items() if name not in LONG_FUNCTIONS_ALLOWED}
    assert unexplained == {}, f"functions over {MAX_FUNCTION_LINES} lines (split them): {unexplained}"
    assert set(LONG_FUNCTIONS_ALLOWED) <= set(found), "allowed long functions that are now short: drop them"
