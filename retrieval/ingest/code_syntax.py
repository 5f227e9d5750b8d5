"""Definitions of a source file from its syntax tree: what each function, method and class spans.

tree-sitter parses (one grammar wheel per language, all offline); a query per language finds the
definitions and the statements inside blocks in C, so Python only touches the definitions. Offsets
come back as character offsets of the file's text (tree-sitter counts UTF-8 bytes). Without the
grammar wheels Python files are read with `ast` (code_ast.py); other languages fall back to lines.
"""
from __future__ import annotations

import functools
import importlib
import re
from typing import Any, NamedTuple

import numpy as np

# language -> (grammar module, language function)
GRAMMARS = {
    "python": ("tree_sitter_python", "language"), "javascript": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"), "tsx": ("tree_sitter_typescript", "language_tsx"),
    "go": ("tree_sitter_go", "language"), "rust": ("tree_sitter_rust", "language"), "java": ("tree_sitter_java", "language"),
    "c": ("tree_sitter_c", "language"), "cpp": ("tree_sitter_cpp", "language"), "ruby": ("tree_sitter_ruby", "language"),
    "shell": ("tree_sitter_bash", "language"),
}
_JS = {"function_declaration": "function", "generator_function_declaration": "function", "class_declaration": "class",
       "method_definition": "function", "variable_declarator": "function"}
_TS = {**_JS, "abstract_class_declaration": "class", "interface_declaration": "class", "enum_declaration": "class",
       "function_signature": "function", "abstract_method_signature": "function"}
_CLIKE = {"function_definition": "function", "struct_specifier": "class", "union_specifier": "class", "enum_specifier": "class"}
# node type -> kind ("function" becomes "method" inside a class); "module" marks namespaces
DEFINITIONS: dict[str, dict[str, str]] = {
    "python": {"function_definition": "function", "class_definition": "class"},
    "javascript": _JS, "typescript": _TS, "tsx": _TS,
    "go": {"function_declaration": "function", "method_declaration": "method", "type_spec": "class"},
    "rust": {"function_item": "function", "struct_item": "class", "enum_item": "class", "trait_item": "class",
             "impl_item": "class", "mod_item": "module", "union_item": "class", "macro_definition": "function"},
    "java": {"class_declaration": "class", "interface_declaration": "class", "enum_declaration": "class",
             "record_declaration": "class", "annotation_type_declaration": "class", "method_declaration": "function",
             "constructor_declaration": "function"},
    "c": _CLIKE,
    "cpp": {**_CLIKE, "class_specifier": "class", "namespace_definition": "module"},
    "ruby": {"method": "function", "singleton_method": "function", "class": "class", "module": "module"},
    "shell": {"function_definition": "function"},
}
# nodes whose named children are statements (the places a long definition may be cut)
BLOCKS = {
    "python": "module block", "javascript": "program statement_block class_body switch_body",
    "typescript": "program statement_block class_body interface_body switch_body", "go": "source_file block statement_list",
    "rust": "source_file block declaration_list", "java": "program block class_body interface_body constructor_body switch_block",
    "c": "translation_unit compound_statement field_declaration_list", "ruby": "program body_statement then else do_block",
    "cpp": "translation_unit compound_statement field_declaration_list declaration_list", "shell": "program compound_statement",
}
BLOCKS["tsx"] = BLOCKS["typescript"]
_WRAPPERS = frozenset({"decorated_definition", "export_statement", "template_declaration", "lexical_declaration",
                       "variable_declaration", "type_declaration"})
_FUNC_VALUES = frozenset({"arrow_function", "function_expression", "function", "generator_function", "class"})
_NAME_NODES = frozenset({"identifier", "field_identifier", "qualified_identifier", "type_identifier", "operator_name",
                         "destructor_name", "property_identifier", "constant", "word", "scope_resolution"})


class Definition(NamedTuple):
    start: int  # character offsets of the whole definition: leading comments and decorators included
    end: int
    name: str
    kind: str  # function | method | class | module
    sig_start: int  # where the definition's own header begins (after decorators and comments)
    body_start: int  # where its body begins (== end when it has none): the signature is [sig_start, body_start)
    owner: str  # a type named outside the definition: Go receiver, C++ `Class::` scope ("" when none)


class Syntax(NamedTuple):
    definitions: list[Definition]  # sorted by start, then longest first
    cuts: list[tuple[int, int]]  # (line start offset, column) of every statement that starts its line
    error: str | None  # why the file cannot be chunked by syntax (then the other fields are empty)


def language_of(source: str, language: str | None) -> str | None:
    """The grammar for a file, or None when there is none (TSX has its own)."""
    if language == "typescript" and source.lower().endswith(".tsx"):
        return "tsx"
    if language == "shell" and source.lower().endswith(".fish"):
        return None
    return language if language in GRAMMARS else None


@functools.cache
def _grammar(language: str) -> tuple[Any, Any] | None:
    """(parser, query) for a language, built once per process; None when the wheel is missing."""
    try:
        from tree_sitter import Language, Parser, Query
        module, func = GRAMMARS[language]
        lang = Language(getattr(importlib.import_module(module), func)())
    except ImportError:
        return None
    defs = " ".join(f"({t})" for t in DEFINITIONS[language])
    blocks = " ".join(f"({t})" for t in BLOCKS[language].split())
    return Parser(lang), Query(lang, f"[{defs}] @def ([{blocks}] (_) @stmt)")


def grammar_available(language: str) -> bool:
    return _grammar(language) is not None


def char_offsets(text: str, data: bytes) -> np.ndarray | None:
    """Byte offset -> character offset table (None when the text is ASCII and they are equal)."""
    if len(data) == len(text):
        return None
    cps = np.frombuffer(text.encode("utf-32-le"), np.uint32)  # (n_chars,)
    widths = 1 + (cps >= 0x80) + (cps >= 0x800) + (cps >= 0x10000)  # UTF-8 bytes per character
    starts = np.zeros(len(text) + 1, np.int64)
    np.cumsum(widths, out=starts[1:])
    return starts


def _name(node: Any, ntype: str) -> tuple[str, str]:
    """(name, owner) of a definition node; owner is a type named outside it (Go receiver, C++ scope)."""
    if ntype == "impl_item":
        t = node.child_by_field_name("type")
        return (t.text.decode("utf-8", "replace") if t is not None else "impl"), ""
    got = node.child_by_field_name("name")
    if got is None and ntype == "function_definition":  # C/C++: the name sits inside the declarator chain
        got = node.child_by_field_name("declarator")
        while got is not None and got.type not in _NAME_NODES:
            got = got.child_by_field_name("declarator")
    if got is None:
        return "", ""
    name = got.text.decode("utf-8", "replace")
    owner = ""
    if ntype == "method_declaration" and node.child_by_field_name("receiver") is not None:  # Go
        recv = node.child_by_field_name("receiver").text.decode("utf-8", "replace")
        types = re.findall(r"[A-Za-z_]\w*", recv)
        owner = types[-1] if types else ""
    elif "::" in name:
        owner, name = name.rsplit("::", 1)
        owner = owner.replace("::", ".")
    return name, owner


def _outer(node: Any) -> Any:
    """The node that carries the definition's decorators, `export` or `template <...>`."""
    while node.parent is not None and node.parent.type in _WRAPPERS:
        node = node.parent
    return node


def _leading_comments(node: Any) -> Any:
    """The first of the comments right above `node` (no blank line between), or node itself."""
    first = node
    prev = node.prev_named_sibling
    while prev is not None and "comment" in prev.type and prev.end_point[0] >= first.start_point[0] - 1:
        first = prev
        prev = prev.prev_named_sibling
    return first


def _definition(node: Any, kinds: dict[str, str]) -> tuple[Any, str, str, str, Any, Any] | None:
    """(outer node, name, kind, owner, header node, body node) or None when it is no definition."""
    ntype = node.type
    if ntype == "variable_declarator":  # const f = () => ..., only at statement level
        value = node.child_by_field_name("value")
        if value is None or value.type not in _FUNC_VALUES or node.parent is None or node.parent.parent is None \
                or node.parent.parent.type not in ("program", "export_statement", "statement_block"):
            return None
        name, owner = _name(node, ntype)
        kind = "class" if value.type == "class" else "function"
        return _outer(node.parent), name, kind, owner, node.parent, value.child_by_field_name("body")
    if ntype == "type_spec" and (node.child_by_field_name("type") is None
                                 or node.child_by_field_name("type").type not in ("struct_type", "interface_type")):
        return None
    if ntype in ("struct_specifier", "union_specifier", "enum_specifier") and node.child_by_field_name("body") is None:
        return None  # `struct foo *p;` mentions a type, it does not define one
    name, owner = _name(node, ntype)
    if not name:
        return None
    header = node.parent if ntype == "type_spec" else node
    body = node.child_by_field_name("body") or (node.child_by_field_name("type") if ntype == "type_spec" else None)
    return _outer(header), name, kinds[ntype], owner, header, body


def parse(text: str, language: str) -> Syntax:
    """The definitions and statement starts of `text` (a `language` in GRAMMARS), or the reason
    it cannot be chunked by syntax: a missing grammar or a syntax error (its line is named)."""
    grammar = _grammar(language)
    if grammar is None:
        return Syntax([], [], f"no tree-sitter grammar for {language} installed (pip install {GRAMMARS[language][0].replace('_', '-')})")
    from tree_sitter import QueryCursor

    parser, query = grammar
    data = text.encode("utf-8")
    tree = parser.parse(data)
    root = tree.root_node
    if root.has_error:
        return Syntax([], [], f"syntax error near line {_error_line(root)} ({language}); chunked by lines instead")
    table = char_offsets(text, data)

    def ch(b: int) -> int:
        return int(np.searchsorted(table, b)) if table is not None else b

    caps = QueryCursor(query).captures(root)
    kinds = DEFINITIONS[language]
    defs = []
    for node in caps.get("def", []):
        got = _definition(node, kinds)
        if got is None:
            continue
        outer, name, kind, owner, header, body = got
        first = _leading_comments(outer)
        body_start = body.start_byte if body is not None else outer.end_byte
        defs.append(Definition(ch(first.start_byte), ch(outer.end_byte), name, kind, ch(header.start_byte), ch(body_start), owner))
    defs = sorted(set(defs), key=lambda d: (d.start, -d.end))
    cuts = sorted({(ch(n.start_byte - n.start_point[1]), n.start_point[1]) for n in caps.get("stmt", [])
                   if not data[n.start_byte - n.start_point[1] : n.start_byte].strip()})
    return Syntax(defs, cuts, None)


def _error_line(root: Any) -> int:
    """1-based line of the first ERROR or MISSING node."""
    node = root
    while True:
        nxt = next((c for c in node.children if c.has_error or c.is_missing or c.type == "ERROR"), None)
        if nxt is None or nxt.type == "ERROR" or nxt.is_missing:
            return (nxt or node).start_point[0] + 1
        node = nxt
