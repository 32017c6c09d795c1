"""HumanEval under the ``reference`` protocol: the program Fast-dLLM's ``postprocess_code.py`` scores.

The reference does not score HumanEval with lm-eval's ``prompt + completion``: it takes the part of
the output after the first ```` ```python ```` fence up to the next fence (the whole output when there
is none), puts the doc's prompt and a newline in front, and keeps only what its ``sanitize`` keeps:

1. tabs become four spaces, line ends ``\\n``, the text is stripped and ends with one newline;
2. of the first 100 lines, the contiguous run that parses as Python with the most non-blank lines
   (the first such run on ties);
3. from that code: every import, every class, every function that contains a ``return``, every
   assignment to a plain name (a later definition of a name replaces an earlier one in place),
   and of the definitions only those the entry point reaches through the names they use.

This module restates those rules (no code of the reference is copied).
"""
from __future__ import annotations

import ast
from itertools import accumulate

MAX_LINES = 100


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, MemoryError, ValueError):
        return False
    return True


def longest_valid_code(text: str) -> str:
    """The contiguous line run (of the first 100 lines) that parses, with the most non-blank lines."""
    lines = text.splitlines()[:MAX_LINES]
    filled = [0, *accumulate(int(bool(line.strip())) for line in lines)]
    best, best_code = 0, ""
    for i in range(len(lines)):
        for j in range(i, len(lines)):
            count = filled[j + 1] - filled[i]
            if count > best:  # only a strictly larger run can replace the best one
                code = "\n".join(lines[i:j + 1])
                if _parses(code):
                    best, best_code = count, code
    return best_code


def _names_used(node: ast.AST) -> set[str]:
    """Names a definition refers to: plain names, and the attribute part of ``a.b`` (``b``)."""
    used, stack = set(), [node]
    while stack:
        for child in ast.iter_child_nodes(stack.pop()):
            if isinstance(child, ast.Name):
                used.add(child.id)
            elif isinstance(child, ast.Attribute):
                used.add(child.attr)
            else:
                stack.append(child)
    return used


def _definitions(tree: ast.Module) -> tuple[list[ast.AST], dict[str, ast.AST]]:
    imports, defs = [], {}
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imports.append(node)
        elif isinstance(node, ast.ClassDef):
            defs[node.name] = node
        elif isinstance(node, ast.FunctionDef):
            if any(isinstance(n, ast.Return) for n in ast.walk(node)):
                defs[node.name] = node
        elif isinstance(node, ast.Assign) and node.targets and isinstance(node.targets[0], ast.Name):
            defs[node.targets[0].id] = node
    return imports, defs


def sanitize(text: str, entry_point: str | None = None) -> str:
    """The imports and the definitions reachable from ``entry_point`` (all when None), unparsed."""
    text = text.replace("\t", "    ").replace("\r\n", "\n").replace("\r", "\n").strip() + "\n"
    imports, defs = _definitions(ast.parse(longest_valid_code(text)))
    keep = set(defs)
    if entry_point:
        uses = {name: _names_used(node) for name, node in defs.items()}
        keep, todo = set(), [entry_point]
        while todo:
            name = todo.pop()
            if name not in keep:
                keep.add(name)
                todo.extend(uses.get(name, set()) - keep)
    return "\n".join([*(ast.unparse(n) for n in imports), *(ast.unparse(n) for k, n in defs.items() if k in keep)])


def code_block(output: str) -> str:
    """The output after the first ```` ```python ```` line up to the next fence (all of it without one)."""
    return output.split("```python\n", 1)[-1].split("```")[0]


def reference_program(doc: dict, output: str) -> str:
    """The HumanEval program body the reference scores for ``output`` (its tests are appended after)."""
    return sanitize(doc["prompt"] + "\n" + code_block(output), doc["entry_point"])
