"""The command line sits on top: no library module imports llamacpu.cli (checked on the source, by AST)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llamacpu"


def imported_modules(path: Path, source: str | None = None) -> set[str]:
    """Absolute names of every module a file imports (relative imports resolved against its package)."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
    return names


def test_no_library_module_imports_the_cli():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.is_relative_to(PACKAGE / "cli"):
            continue
        if any(n == "llamacpu.cli" or n.startswith("llamacpu.cli.") for n in imported_modules(path)):
            offenders.append(str(path.relative_to(PACKAGE.parent)))
    assert offenders == []


def test_the_check_sees_relative_and_in_function_imports():
    # the check above can fail: the import that closed the old cycle (chat -> cli) is found
    here = PACKAGE / "generation" / "chat.py"
    assert "llamacpu.generation.stream" in imported_modules(here)
    assert "llamacpu.cli.speed_line" in imported_modules(here, "def f():\n    from ..cli import speed_line\n")
    assert "llamacpu.cli" in imported_modules(PACKAGE / "inspect" / "__init__.py", "from .. import cli\n")


def test_default_model_is_public():
    import llamacpu

    path = llamacpu.default_model()
    assert path.name.endswith(".gguf") and path.is_file()
