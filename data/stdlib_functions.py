"""Documented functions of the standard library, as (signature, docstring, summary, body) records.

Functions come from the `code` documents of the embedded corpus and keep its split:
a function is in the validation split when its file is. Only functions whose
header ends in a colon on its own lines and whose docstring directly follows it
are kept, so the signature is always an exact prefix of the function source.
"""

import ast
import dataclasses
import functools

from .embedded_corpus import documents

MAX_SOURCE_CHARS = 1200     # Longer functions would not fit an instruction's inputs.
MAX_DOCSTRING_CHARS = 800
MIN_DOCSTRING_CHARS = 20


@dataclasses.dataclass(frozen=True)
class StdlibFunction:
    module: str       # e.g. 'json.decoder'
    qualname: str     # e.g. 'JSONDecoder.decode'
    source: str       # the function, dedented, from 'def' (or 'async def') to its last line
    signature: str    # the header: a prefix of `source` ending in ':'
    docstring: str    # cleaned (dedented) docstring
    summary: str      # the docstring's first line, when it is a paragraph of its own
    body: str         # `source` without the docstring lines; '' if nothing else is left


@functools.cache
def stdlib_functions(split: str) -> tuple[StdlibFunction, ...]:
    """The documented functions in the corpus files of `split` ('train' or 'validation')."""
    found = []
    for doc in documents.split_documents("code")[split]:
        found.extend(functions_in_module(doc.text, module_name(doc.name)))
    return tuple(found)


def module_name(relative_path: str) -> str:
    """'json/decoder.py' -> 'json.decoder'; 'json/__init__.py' -> 'json'."""
    parts = relative_path.removesuffix(".py").split("/")
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def functions_in_module(text: str, module: str) -> list[StdlibFunction]:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    lines = text.splitlines()
    found = []
    for node, qualname in _function_nodes(tree, prefix=""):
        function = _function_record(node, lines, module, qualname)
        if function is not None:
            found.append(function)
    return found


def _function_nodes(tree: ast.AST, prefix: str):
    """(function node, qualified name) for functions in modules, classes and functions."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node, prefix + node.name
            yield from _function_nodes(node, prefix + node.name + ".<locals>.")
        elif isinstance(node, ast.ClassDef):
            yield from _function_nodes(node, prefix + node.name + ".")


def _function_record(node, lines: list[str], module: str, qualname: str) -> StdlibFunction | None:
    docstring = ast.get_docstring(node, clean=True)
    if not docstring or not MIN_DOCSTRING_CHARS <= len(docstring) <= MAX_DOCSTRING_CHARS:
        return None
    first, doc_statement = node.lineno, node.body[0]
    function_lines = _dedent(lines[first - 1:node.end_lineno], node.col_offset)
    header = "\n".join(function_lines[:doc_statement.lineno - first]).rstrip()
    source = "\n".join(function_lines).rstrip()
    if not header.endswith(":") or len(source) > MAX_SOURCE_CHARS:
        return None
    body_lines = (function_lines[:doc_statement.lineno - first]
                  + function_lines[doc_statement.end_lineno - first + 1:])
    body = "\n".join(body_lines).rstrip() if len(node.body) > 1 else ""
    return StdlibFunction(module=module, qualname=qualname, source=source, signature=header,
                          docstring=docstring, summary=summary_line(docstring), body=body)


def summary_line(docstring: str) -> str:
    """The first line, if the first paragraph is that one line (PEP 257); else ''."""
    paragraph = docstring.strip().split("\n\n", 1)[0]
    return "" if "\n" in paragraph else paragraph.strip()


def _dedent(lines: list[str], indent: int) -> list[str]:
    """Removes up to `indent` leading spaces from each line (string contents may have fewer)."""
    dedented = []
    for line in lines:
        spaces = len(line) - len(line.lstrip(" "))
        dedented.append(line[min(spaces, indent):])
    return dedented

