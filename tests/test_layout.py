"""The layout page (docs/layout.md) against the tree: every module listed once, imports run down the floors,
no import circle in lm/, every long module's reason written down. The import graph is read from the source
(every `import` and `from ... import`, at module level or inside a function)."""

import ast
import fnmatch
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "layout.md").read_text()
LONG = 400


def block(kind: str) -> list[str]:
  m = re.search(rf"```{kind}\n(.*?)```", PAGE, re.S)
  assert m, f"docs/layout.md has no ```{kind} block"
  return [line for line in m.group(1).splitlines() if line.strip()]


def modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in (ROOT / "lm").rglob("*.py"):
    parts = path.relative_to(ROOT).with_suffix("").parts
    out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return out


def import_graph(mods: dict[str, pathlib.Path]) -> dict[str, set[str]]:
  """Module -> the lm modules it imports (a name imported from a package counts as its module if it is one)."""
  edges = {m: set() for m in mods}
  for name, path in mods.items():
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          parts = package.split(".")
          base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
      else:
        continue
      for target in targets:
        while target and target not in mods:
          target = target.rpartition(".")[0]
        if target and target != name:
          edges[name].add(target)
  return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in sorted(edges[v]):
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
        out.append(sorted(comp))

  for v in sorted(edges):
    if v not in index:
      visit(v)
  return out


def test_no_import_circle_in_lm():
  assert cycles(import_graph(modules())) == []


def test_cycle_finder_finds_one():
  assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def floors() -> dict[str, int]:
  out = {}
  for line in block("floors"):
    number, _, patterns = line.partition(" ")
    for module in modules():
      if any(fnmatch.fnmatchcase(module, p) for p in patterns.split(":", 1)[1].split()):
        assert module not in out, f"{module} is on floors {out[module]} and {number} in docs/layout.md"
        out[module] = int(number)
  return out


def test_imports_run_down_the_floors():
  floor = floors()
  mods = modules()
  assert not sorted(set(mods) - set(floor)), "modules on no floor of docs/layout.md"
  up = [f"{a} (floor {floor[a]}) imports {b} (floor {floor[b]})" for a, bs in import_graph(mods).items()
        for b in bs if floor[b] > floor[a]]
  assert not up, up


def test_the_page_lists_every_module_once():
  listed = [line.split()[0] for line in block("modules")]
  assert len(listed) == len(set(listed)), "a module is listed twice in docs/layout.md"
  assert sorted(listed) == sorted(modules()), (sorted(set(modules()) - set(listed)), sorted(set(listed) - set(modules())))


def test_every_long_module_has_its_reason():
  reasons = {line.split()[0]: line.split(None, 1)[1] for line in block("long")}
  long = {m for m, p in modules().items() if len(p.read_text().splitlines()) > LONG}
  assert not sorted(long - set(reasons)), f"modules over {LONG} lines without a reason in docs/layout.md"
  assert not sorted(set(reasons) - long), "docs/layout.md gives reasons for modules that are no longer long"
