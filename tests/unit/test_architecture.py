"""The house rules, checked on the source: no import circles, a core without Ray, run-folder names in one place, and
the run-folder reference generated from that place."""
import ast
import re
from pathlib import Path

from rlaif import layout

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("rlaif", "actors", "pipelines", "serve")


def modules() -> dict[str, Path]:
    out = {}
    for top in PACKAGES:
        for path in (ROOT / top).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project's modules `path` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n in known}
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_itself_back_through_others():
    known = modules()
    graph = {m: imports(p, known) - {m} for m, p in known.items()}
    assert circles(graph) == []


def test_the_core_imports_no_ray_and_nothing_above_it():
    for path in (ROOT / "rlaif").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for name in names:
                assert name.split(".")[0] not in ("ray", "actors", "pipelines", "serve"), f"{path}: imports {name}"


def test_run_folder_file_names_are_spelled_only_in_rlaif_layout():
    names = {f.name for cls in (layout.RunLayout, layout.RoundLayout, layout.PolicyLayout, layout.InputsLayout,
                                layout.ExperimentLayout, layout.GateLayout, layout.AuditLayout, layout.ReportLayout,
                                layout.LogsLayout) for f in cls.files()}
    names = {n for n in names if "." in n}  # file names; folder names (policy, adapter, ...) are ordinary words
    spelled = []
    for path in (p for top in PACKAGES for p in (ROOT / top).rglob("*.py")):
        if path == ROOT / "rlaif" / "layout.py" or "testkit" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                spelled.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert spelled == []


def test_docs_run_folder_is_generated_from_the_layout():
    # Regenerate with: python -m rlaif.layout > docs/run_folder.md
    assert (ROOT / "docs" / "run_folder.md").read_text() == layout.markdown()


def test_layout_names_every_artifact_once_and_rounds_in_order(tmp_path):
    run = layout.RunLayout(tmp_path)
    assert str(run.round(0).judgments).endswith("round_0/judgments.parquet")
    assert run.round(-1).eval == run.base.eval and str(run.base.dir).endswith("round_base")
    for r in (10, 2, 0):
        (tmp_path / f"round_{r}").mkdir()
    (tmp_path / "round_base").mkdir()
    assert [r.dir.name for r in run.rounds()] == ["round_0", "round_2", "round_10"]
    for cls in (layout.RunLayout, layout.RoundLayout, layout.InputsLayout, layout.ReportLayout, layout.LogsLayout):
        files = [f.name for f in cls.files()]
        assert len(files) == len(set(files)) and all(re.fullmatch(r"[a-z_]+(\.[a-z]+)?", f) for f in files)
