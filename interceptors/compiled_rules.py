"""The contract's common protovalidate rules, compiled into one Python predicate per message type.

`compile_rules(message_class)` returns `valid(message) -> bool` or None. True
means protovalidate would find no violation in the message; False means
"ask protovalidate", which stays the one authority on violations and their
wording (interceptors.validation). None means the type uses a rule outside
the compiled subset, so every message of it goes to protovalidate.

Why: protovalidate's Rust engine is exact but touches much memory per call;
under load, with grpc's own code evicting the caches between calls, it cost
about 14 us per small request (`make bench`, cold-cache measurements in the
README), the largest part of the server chain. A generated predicate is a
few comparisons.

Soundness is the design rule, shown by differential tests against
protovalidate: the predicate may be stricter than protovalidate (that only
costs the slow path), never more lenient. Hence the subset is closed: a rule
message with any field not listed here (including predefined-rule
extensions), message- or oneof-level rules, CEL, floats, repeated and map
rules, recursive types or an `ignore` mode combined with `required` make the
type uncompiled. Regular expressions are RE2 in protovalidate: only patterns
in a safe common subset of RE2 and `re` compile (`_SAFE_PATTERN`), and a
value containing a newline takes the slow path (`$` differs). A pattern
`re` provably matches in linear time (anchored at the start, no group or
alternation, at most one quantifier of variable count: `^[!-~]+$`) runs on
`re` with `re.ASCII`, 0.2 us a call; any other runs on RE2 itself
(google-re2, 3.4 us), because `re` backtracks: `^(a+)+$` took 11 s on 29
characters, one request blocking the server. The predicate is built as
source and compiled once per type (the technique of `dataclasses`): field
names and constants are passed in a namespace, never written into the
source, except names that are plain identifiers.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable
from typing import Any

import re2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from buf.validate import validate_pb2

Predicate = Callable[[Message], bool]

_IGNORE_UNSPECIFIED = validate_pb2.IGNORE_UNSPECIFIED
_IGNORE_IF_ZERO_VALUE = validate_pb2.IGNORE_IF_ZERO_VALUE
_IGNORE_ALWAYS = validate_pb2.IGNORE_ALWAYS

_INTEGER_KINDS = {
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_SINT32: "sint32",
    FieldDescriptor.TYPE_SINT64: "sint64",
    FieldDescriptor.TYPE_FIXED32: "fixed32",
    FieldDescriptor.TYPE_FIXED64: "fixed64",
    FieldDescriptor.TYPE_SFIXED32: "sfixed32",
    FieldDescriptor.TYPE_SFIXED64: "sfixed64",
}
# The rule kind each compiled field type takes (protovalidate refuses any other).
_KIND_OF_TYPE = {
    **_INTEGER_KINDS,
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_ENUM: "enum",
}
_INTEGER_RULES = {"const", "lt", "lte", "gt", "gte", "in", "not_in", "example"}
# The rules compiled per kind; `example` is documentation and checks nothing.
_COMPILED_RULES = {
    **dict.fromkeys(_INTEGER_KINDS.values(), _INTEGER_RULES),
    "bool": {"const", "example"},
    "enum": {"const", "defined_only", "in", "not_in", "example"},
    "bytes": {"const", "len", "min_len", "max_len", "prefix", "suffix", "contains", "in", "not_in"}
    | {"example"},
    "string": {
        "const",
        "len",
        "min_len",
        "max_len",
        "len_bytes",
        "min_bytes",
        "max_bytes",
        "pattern",
        "prefix",
        "suffix",
        "contains",
        "not_contains",
        "in",
        "not_in",
        "uuid",
        "example",
    },
}

# RE2 and `re` agree on this subset: literals, classes without POSIX names,
# anchors, groups (plain or non-capturing), alternation, the quantifiers
# * + ? {n} {n,} {n,m} (lazy or not), and the escapes \d \D \w \W and escaped
# punctuation. \s differs (`re` also matches \v), `{,n}` is a quantifier in
# `re` but literal in RE2, and possessive quantifiers are errors in RE2.
_SAFE_PATTERN = re.compile(
    r"(?:[^\\\[\]{}()]|\\[dDwW.^$|?*+()\[\]{}\\/-]|\[(?![:\[])|\]|\((?:\?:)?|\)"
    r"|\{[0-9]{1,3}(?:,[0-9]{0,3})?\})*"
)
_UNSAFE_PATTERN = re.compile(r"\(\?(?!:)|[*+?}]\+")
_FIXED_COUNT = re.compile(r"\{([0-9]+)(?:,\1)?\}")
_MAX_FIXED_WIDTH = 32
_UUID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", re.ASCII
)


class Uncompiled(Exception):
    """The type uses a rule outside the compiled subset."""


def compile_rules(message_class: type[Message]) -> Predicate | None:
    """The predicate for messages of `message_class`, or None (all go to protovalidate)."""
    descriptor: Descriptor = message_class.DESCRIPTOR  # type: ignore[assignment]  # upb's is alike
    try:
        return _Compiler().predicate(descriptor, message_class)
    except Uncompiled:
        return None


def _only(rules: Message, allowed: set[str]) -> None:
    for field, _ in rules.ListFields():
        if field.is_extension or field.name not in allowed:
            raise Uncompiled(field.full_name)


def _message_type(field: FieldDescriptor) -> Descriptor:
    message_type = field.message_type
    assert message_type is not None, field.full_name  # a message field always has its type
    return message_type


def _pattern_search(pattern: str) -> Callable[[str], object]:
    """`search` of `pattern`: truthy where protovalidate's would match (see the docstring)."""
    if not _SAFE_PATTERN.fullmatch(pattern) or _UNSAFE_PATTERN.search(pattern):
        raise Uncompiled(f"pattern {pattern!r}")
    try:
        if _linear_in_re(pattern):
            return re.compile(pattern, re.ASCII).search
        return re2.compile(pattern).search  # type: ignore[no-any-return]
    except (re.error, re2.error):
        raise Uncompiled(f"pattern {pattern!r}") from None


def _linear_in_re(pattern: str) -> bool:
    """Whether `re` matches `pattern` in time linear in the input: anchored at the start,
    no group or alternation, at most one quantifier whose count varies, and at most
    `_MAX_FIXED_WIDTH` characters matched by the rest (the one quantifier backtracks at
    most once per character, each time over that rest: `^[a-z]*[a-z]{999}$` took 0.67 s
    on 200 KB)."""
    if not pattern.startswith("^"):
        return False  # search() would try every start: quadratic
    variable, width, index, in_class = 0, 0, 1, False
    while index < len(pattern):
        char = pattern[index]
        fixed = _FIXED_COUNT.match(pattern, index) if char == "{" else None
        if char == "\\":
            width += 1
            index += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            width += 1
            index += 1
            index += pattern.startswith("^", index)
            index += pattern.startswith("]", index)  # a class's first `]` is a literal
            continue
        elif char in "(|":
            return False
        elif fixed is not None:
            width += int(fixed.group(1)) - 1  # the atom before it, that many times
            index = fixed.end()
            continue
        elif char in "*+?{":
            variable += 1
            if char == "{":
                index = pattern.index("}", index)  # `{n,}` or `{n,m}`: _SAFE_PATTERN closed it
            if pattern[index + 1 : index + 2] == "?":
                index += 1  # a lazy quantifier's `?` is not another quantifier
        elif char != "$":
            width += 1
        index += 1
    return variable <= 1 and width <= _MAX_FIXED_WIDTH


class _Compiler:
    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {"_uuid": _UUID.fullmatch}
        self.lines: list[str] = []
        self.compiling: set[str] = set()  # types on the stack: recursion is not compiled
        self.compiled: dict[str, str | None] = {}  # type -> function name, None: no rules

    def constant(self, value: object) -> str:
        name = f"_c{len(self.namespace)}"
        self.namespace[name] = value
        return name

    def predicate(self, descriptor: Descriptor, message_class: type[Message]) -> Predicate:
        self.namespace["_class"] = message_class
        name = self.function_for(descriptor, root=True)
        assert name is not None  # the root always checks the message's class
        exec("\n".join(self.lines), self.namespace)  # noqa: S102 - our own source, see docstring
        predicate: Predicate = self.namespace[name]
        return predicate

    def function_for(self, descriptor: Descriptor, root: bool = False) -> str | None:
        """Emits `def _vN(m) -> bool` for the type; None when a nested type has no rule at all."""
        full_name = descriptor.full_name
        if full_name in self.compiled:
            return self.compiled[full_name]
        if full_name in self.compiling:
            raise Uncompiled(f"recursive type {full_name}")
        self.compiling.add(full_name)
        options = descriptor.GetOptions()
        if options.HasExtension(validate_pb2.message):
            raise Uncompiled(f"message rules on {full_name}")
        for oneof in descriptor.oneofs:
            if oneof.GetOptions().HasExtension(validate_pb2.oneof):
                raise Uncompiled(f"oneof rules on {oneof.full_name}")
        # The root also refuses other types, such as interceptors.validation's Undecodable.
        body = ["    if m.__class__ is not _class: return False"] if root else []
        for field in descriptor.fields:
            body += self.field_checks(field)
        self.compiling.discard(full_name)
        if not body:
            self.compiled[full_name] = None
            return None
        name = f"_v{len(self.compiled)}"
        self.compiled[full_name] = name
        self.lines += [f"def {name}(m):", *body, "    return True"]
        return name

    def access(self, field: FieldDescriptor) -> str:
        if field.name.isidentifier() and not keyword.iskeyword(field.name):
            return f"m.{field.name}"
        return f"getattr(m, {self.constant(field.name)})"

    def field_checks(self, field: FieldDescriptor) -> list[str]:
        options = field.GetOptions()
        rules = (
            options.Extensions[validate_pb2.field]
            if options.HasExtension(validate_pb2.field)
            else None
        )
        value = self.access(field)
        if field.is_repeated:  # repeated and map fields: only their messages' own rules
            if rules is not None and rules.ListFields():
                raise Uncompiled(f"rules on repeated field {field.full_name}")
            return self.element_checks(field, value)
        kind = rules.WhichOneof("type") if rules is not None else None
        ignore = rules.ignore if rules is not None else _IGNORE_UNSPECIFIED
        required = rules is not None and rules.required
        if rules is not None:
            _only(rules, {"required", "ignore", *([kind] if kind else [])})
        if ignore == _IGNORE_ALWAYS:
            return []
        if required and ignore != _IGNORE_UNSPECIFIED:
            raise Uncompiled(f"required with an ignore mode on {field.full_name}")
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if kind is not None:
                raise Uncompiled(f"{kind} rules on {field.full_name}")
            nested = self.function_for(_message_type(field))
            has = f"m.HasField({self.constant(field.name)})"
            lines = [f"    if not {has}: return False"] if required else []
            if nested is not None:
                lines.append(f"    if {has} and not {nested}({value}): return False")
            return lines
        conditions = self.scalar_conditions(field, kind, rules)
        if required:
            conditions.insert(0, f"{self.populated(field, value)}")
        if not conditions:
            return []
        test = " and ".join(f"({condition})" for condition in conditions)
        lines = [f"    v = {value}"]
        skip = None
        if field.has_presence:  # unpopulated fields with presence are never checked
            skip = f"m.HasField({self.constant(field.name)})"
        elif ignore == _IGNORE_IF_ZERO_VALUE:
            skip = "v"
        if skip is not None and not required:
            lines.append(f"    if {skip} and not ({test}): return False")
        else:
            lines.append(f"    if not ({test}): return False")
        return lines

    def populated(self, field: FieldDescriptor, value: str) -> str:
        if field.has_presence:
            return f"m.HasField({self.constant(field.name)})"
        return "v"  # no presence: set means not the zero value

    def element_checks(self, field: FieldDescriptor, value: str) -> list[str]:
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            return []
        message_type = _message_type(field)
        if message_type.GetOptions().map_entry:
            value_field = message_type.fields_by_name["value"]
            if value_field.type != FieldDescriptor.TYPE_MESSAGE:
                return []
            nested = self.function_for(_message_type(value_field))
            items = f"{value}.values()"
        else:
            nested = self.function_for(message_type)
            items = value
        if nested is None:
            return []
        return [f"    for x in {items}:", f"        if not {nested}(x): return False"]

    def scalar_conditions(self, field: FieldDescriptor, kind: str | None, rules: Any) -> list[str]:
        if kind is None:
            return []
        if kind != _KIND_OF_TYPE.get(field.type):
            raise Uncompiled(f"{kind} rules on {field.full_name}")
        typed = getattr(rules, kind)
        _only(typed, _COMPILED_RULES[kind])
        c = self.constant
        has = typed.HasField
        conditions: list[str] = []
        if has("const"):
            conditions.append(f"v == {c(typed.const)}")
        if field.type in _INTEGER_KINDS:
            # Both bounds: the conjunction, which is protovalidate's range or, for an
            # "exclusive" range (upper below lower), stricter than it: sound either way.
            for rule, operator in (("gt", ">"), ("gte", ">="), ("lt", "<"), ("lte", "<=")):
                if has(rule):
                    conditions.append(f"v {operator} {c(getattr(typed, rule))}")
        elif kind == "string":
            conditions += self.string_conditions(typed)
        elif kind == "bytes":
            conditions += self.length_conditions(typed, "len(v)", ("len", "min_len", "max_len"))
            conditions += self.affix_conditions(typed)
        elif kind == "enum" and typed.defined_only:
            enum_type = field.enum_type
            assert enum_type is not None, field.full_name
            defined = frozenset(value.number for value in enum_type.values)
            conditions.append(f"v in {c(defined)}")
        if getattr(typed, "in", None):
            conditions.append(f"v in {c(frozenset(getattr(typed, 'in')))}")
        if getattr(typed, "not_in", None):
            conditions.append(f"v not in {c(frozenset(typed.not_in))}")
        return conditions

    def length_conditions(self, typed: Any, size: str, rules: tuple[str, str, str]) -> list[str]:
        exact, low, high = rules
        conditions = []
        for rule, operator in ((exact, "=="), (low, ">="), (high, "<=")):
            if typed.HasField(rule):
                conditions.append(f"{size} {operator} {self.constant(getattr(typed, rule))}")
        return conditions

    def affix_conditions(self, typed: Any) -> list[str]:
        c = self.constant
        conditions = []
        if typed.HasField("prefix"):
            conditions.append(f"v.startswith({c(typed.prefix)})")
        if typed.HasField("suffix"):
            conditions.append(f"v.endswith({c(typed.suffix)})")
        if typed.HasField("contains"):
            conditions.append(f"{c(typed.contains)} in v")
        return conditions

    def string_conditions(self, typed: Any) -> list[str]:
        conditions = self.length_conditions(typed, "len(v)", ("len", "min_len", "max_len"))
        size = "len(v.encode())"
        conditions += self.length_conditions(typed, size, ("len_bytes", "min_bytes", "max_bytes"))
        conditions += self.affix_conditions(typed)
        if typed.HasField("not_contains"):
            conditions.append(f"{self.constant(typed.not_contains)} not in v")
        if typed.uuid:
            conditions.append("_uuid(v)")
        if typed.HasField("pattern"):
            search = self.constant(_pattern_search(typed.pattern))
            conditions.append(f"'\\n' not in v and {search}(v)")
        return conditions
