"""Every config key, generated from the config types: the starter file `dispatcher init`
writes, and the table of keys in the README's reference (a test keeps it in step).

One source: a key's text is the string under its field in config.py (an attribute
docstring; msgspec keeps no field docs, so they are read from the source with `ast`), a
section's text is its class docstring, and defaults come from the types themselves. A key
added to config.py therefore shows up in both outputs, and one without a docstring fails.

Key paths name a pool `<name>` and an item of a list `[]`: `pools.<name>.retry.max_attempts`,
`auth.tokens[].scopes`; the keys of a sink are under `pools.<name>.sink`, whatever its type.
"""

from __future__ import annotations

import ast
import functools
import inspect
import itertools
import textwrap
from collections.abc import Iterator
from typing import Any, NamedTuple

import msgspec
import msgspec.inspect as mi
import yaml

from .config import Settings, settings_from_dict

#: What the starter file runs with beyond the defaults: one pool that logs every message
#: (no external target needed) and a route that sends it every tag.
STARTER: dict[str, Any] = {
    "pools": {"example": {"sink": {"type": "log"}}},
    "routes": [{"match": ">", "pools": ["example"]}],
}

#: Values of the commented-out examples where a default would not do (required keys).
EXAMPLES: dict[str, Any] = {
    "auth.tokens[].name": "ops",
    "auth.tokens[].token_env": "DISPATCHER_OPS_TOKEN",
    "auth.tokens[].scopes": ["produce", "read", "operate", "admin"],
    "pools.<name>.sink.url": "https://example.com/hook",
    "pools.<name>.sink.handler": "mypkg.handlers:record_event",
}

WIDTH = 92  # of the starter file's comment lines


class Key(NamedTuple):
    """One row of the reference: a key path, its default as YAML (None: required; "": a
    section or a list item, which has keys rather than a value) and what it means."""

    path: str
    default: str | None
    description: str


# --- reading the types --------------------------------------------------------------------


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a class: the string literal right under each field."""
    source = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    assert isinstance(source, ast.ClassDef)
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(source.body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def _doc(struct: mi.StructType, field: mi.Field) -> str:
    """A field's text; a section's (server, retry...) is the docstring of its class."""
    kind = _type(field)
    if isinstance(kind, mi.StructType) and kind.tag is None:
        return class_doc(kind.cls)
    try:
        return field_docs(struct.cls)[field.name]
    except KeyError:
        raise LookupError(
            f"config.py: {struct.cls.__name__}.{field.name} has no docstring; put one string "
            "line under the field saying what it means"
        ) from None


def class_doc(cls: type) -> str:
    return " ".join(inspect.cleandoc(cls.__doc__ or "").split())


def _type(field: mi.Field) -> mi.Type:
    found = field.type
    return found.type if isinstance(found, mi.Metadata) else found


def _variants(kind: mi.Type) -> tuple[mi.StructType, ...]:
    """The structs of a tagged union (a sink), else ()."""
    if isinstance(kind, mi.UnionType) and all(
        isinstance(t, mi.StructType) and t.tag is not None for t in kind.types
    ):
        return tuple(t for t in kind.types if isinstance(t, mi.StructType))
    return ()


def _entries(kind: mi.Type) -> tuple[str, mi.StructType] | None:
    """For a map or a list of structs: the path step of one entry, and its struct."""
    if isinstance(kind, mi.DictType) and isinstance(kind.value_type, mi.StructType):
        return ".<name>", kind.value_type
    if isinstance(kind, mi.VarTupleType | mi.ListType) and isinstance(
        kind.item_type, mi.StructType
    ):
        return "[]", kind.item_type
    return None


def _default(field: mi.Field) -> Any:
    if field.default is not msgspec.NODEFAULT:
        return field.default
    if field.default_factory is not msgspec.NODEFAULT:
        return field.default_factory()
    return msgspec.NODEFAULT


def as_yaml(value: Any) -> str:
    """A value as it is written in the config file, on one line."""
    text = yaml.safe_dump(
        msgspec.to_builtins(value), default_flow_style=True, width=1 << 20, sort_keys=False
    )
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _settings_info() -> mi.StructType:
    info = mi.type_info(Settings)
    assert isinstance(info, mi.StructType)
    return info


# --- the reference table ------------------------------------------------------------------


def every_key() -> list[Key]:
    """Every key of the config, in file order."""
    return list(_keys(_settings_info(), ""))


def _keys(struct: mi.StructType, prefix: str) -> Iterator[Key]:
    for field in struct.fields:
        path = prefix + field.name
        kind = _type(field)
        doc = _doc(struct, field)
        if isinstance(kind, mi.StructType) and kind.tag is None:
            yield Key(path, "", doc)
            yield from _keys(kind, path + ".")
            continue
        variants = _variants(kind)
        if variants:
            kinds = " ".join(f"{v.tag}: {_lower(class_doc(v.cls))}" for v in variants)
            yield Key(f"{path}.{variants[0].tag_field}", None, f"{doc} {kinds}")
            for variant in variants:
                for key in _keys(variant, path + "."):
                    yield key._replace(description=f"({variant.tag}) {key.description}")
            continue
        default = _default(field)
        yield Key(path, None if default is msgspec.NODEFAULT else as_yaml(default), doc)
        entries = _entries(kind)
        if entries is not None:
            step, entry = entries
            yield Key(path + step, "", class_doc(entry.cls))
            yield from _keys(entry, path + step + ".")


def _lower(text: str) -> str:
    """'Call a function' -> 'call a function'; 'POST each' stays."""
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def markdown() -> str:
    """The README's table of every key."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for key in every_key():
        default = "required" if key.default is None else f"`{key.default}`" if key.default else ""
        rows.append(f"| `{key.path}` | {default} | {key.description.replace('|', '/')} |")
    return "\n".join(rows) + "\n"


# --- the starter file ---------------------------------------------------------------------


def starter_settings() -> Settings:
    return settings_from_dict(STARTER, env={})


def starter(filename: str = "dispatcher.yaml") -> str:
    """The commented starter config: every key at its default, the example pool and route
    of STARTER, and commented-out examples of the sink types and of a token."""
    head = [
        "dispatcher configuration: every key at its default, with what it means.",
        f"Check it: dispatcher check-config {filename}",
        f"Run it:   dispatcher serve --config {filename}",
        "Environment variables DISPATCHER_<SECTION>__<KEY> override what is set here "
        "(DISPATCHER_SERVER__PORT=9000). To use a commented-out example, remove the first # "
        "of each of its lines.",
        "The pool `example` logs every message, which the route below sends it: replace both "
        "with your own.",
    ]
    out = [line for text in head for line in _comment(text, "")]
    writer = _Writer(out)
    writer.struct(_settings_info(), starter_settings(), "", "")
    return "\n".join(out) + "\n"


def _comment(text: str, indent: str) -> list[str]:
    width = WIDTH - len(indent) - 2
    lines = textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)
    return [f"{indent}# {line}" for line in lines]


MAP, LIST = ".<name>", "[]"  # the path steps to an entry of a map, an item of a list


class _Writer:
    """Writes YAML lines, each key under its comment. `value` is the struct whose values
    are written, or None in a commented-out example (EXAMPLES or the defaults then)."""

    def __init__(self, out: list[str]) -> None:
        self.out = out

    def struct(self, info: mi.StructType, value: Any, indent: str, path: str) -> None:
        for field in info.fields:
            self.field(info, field, value, indent, path + field.name)

    def field(
        self, info: mi.StructType, field: mi.Field, value: Any, indent: str, path: str
    ) -> None:
        kind = _type(field)
        name = field.name
        if not indent:
            self.out.append("")  # a blank line between the sections
        self.out.extend(_comment(_doc(info, field), indent))
        current = None if value is None else getattr(value, name)
        if isinstance(kind, mi.StructType) and kind.tag is None:
            self.out.append(f"{indent}{name}:")
            self.struct(kind, current, indent + "  ", path + ".")
            return
        variants = _variants(kind)
        if variants:
            self.out.append(f"{indent}{name}:")
            self.sink(variants, current, indent + "  ", path + ".")
            return
        entries = _entries(kind)
        if entries is not None:
            self.entries(name, entries, current, indent, path)
            return
        shown = current if value is not None else _example(field, path)
        self.out.append(f"{indent}{name}: {as_yaml(shown)}")

    def sink(
        self, variants: tuple[mi.StructType, ...], current: Any, indent: str, path: str
    ) -> None:
        """The sink in use, then every other type as a commented-out block."""
        chosen = next(v for v in variants if isinstance(current, v.cls))
        tag_field = chosen.tag_field
        self.out.extend(_comment(class_doc(chosen.cls), indent))
        self.out.append(f"{indent}{tag_field}: {chosen.tag}")
        self.struct(chosen, current, indent, path)
        self.out.extend(
            _comment(
                f"Or another {tag_field}: in place of the {tag_field} above and its keys, "
                "one of these.",
                indent,
            )
        )
        for variant in variants:
            if variant is not chosen:
                block = _Writer(_comment(class_doc(variant.cls), indent))
                block.out.append(f"{indent}{tag_field}: {variant.tag}")
                block.struct(variant, None, indent, path)
                self.out.extend(_commented(block.out, indent))

    def entries(
        self, name: str, entries: tuple[str, mi.StructType], current: Any, indent: str, path: str
    ) -> None:
        """A map or list of structs: its entries, or when it is empty (its default), `{}`
        or `[]` and a commented-out example of one entry."""
        step, entry = entries
        inner = indent + "  "
        items = list(current.items() if step == MAP else enumerate(current or ()))
        if not items:
            self.out.append(f"{indent}{name}: {'{}' if step == MAP else '[]'}")
            example = _Writer([f"{indent}{name}:"])
            example.entry(step, entry, "example", None, inner, path + step + ".")
            self.out.extend(_comment("For example, in place of the line above:", indent))
            self.out.extend(_commented(example.out, indent))
            return
        self.out.append(f"{indent}{name}:")
        for key, item in items:
            self.entry(step, entry, key, item, inner, path + step + ".")

    def entry(
        self, step: str, entry: mi.StructType, key: Any, item: Any, indent: str, path: str
    ) -> None:
        """A map's `key:` and the keys of `item` one level in; or a list's item: '- ' and
        its first key at `indent` (after that key's comment), its other keys one level in."""
        self.out.extend(_comment(class_doc(entry.cls), indent))
        if step == MAP:
            self.out.append(f"{indent}{key}:")
            self.struct(entry, item, indent + "  ", path)
            return
        start = len(self.out)
        self.struct(entry, item, indent + "  ", path)
        first = next(i for i in range(start, len(self.out)) if not _is_comment(self.out[i]))
        for i in range(start, first):
            self.out[i] = indent + self.out[i][len(indent) + 2 :]
        self.out[first] = f"{indent}- {self.out[first][len(indent) + 2 :]}"


def _example(field: mi.Field, path: str) -> Any:
    """The value a commented-out example shows."""
    if path in EXAMPLES:
        return EXAMPLES[path]
    default = _default(field)
    if default is msgspec.NODEFAULT:
        raise LookupError(f"starter.py: EXAMPLES has no value for the required key {path}")
    return default


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def _commented(lines: list[str], indent: str) -> list[str]:
    """Comment a block out: one # right at `indent`, so removing it restores the YAML; a
    blank line ends it."""
    return [f"{indent}#{line[len(indent) :]}" for line in lines] + [""]
