"""The compiled rules agree with protovalidate, and never accept what it rejects.

Differential tests: hypothesis generates messages, and the compiled
predicate's answer is compared with protovalidate's on the same message,
for every request type of the contracts and for synthetic contracts (built
here, in the descriptor pool) that each exercise one compiled rule. Where
the compiler is deliberately stricter (exclusive ranges, a newline with a
pattern), only soundness is asserted: True from the predicate means
protovalidate finds no violation.
"""

from __future__ import annotations

import signal
import uuid
from typing import Any

import protovalidate
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buf.validate import validate_pb2
from grpcplatform.testing.v1 import echo_pb2
from interceptors.compiled_rules import _linear_in_re, compile_rules
from interceptors.validation import Undecodable
from ledger.v1 import accounts_pb2, money_pb2, transfers_pb2
from tests.support.messages import message_strategy

VALIDATOR = protovalidate.Validator()
Field = descriptor_pb2.FieldDescriptorProto
Rules = validate_pb2.FieldRules


def no_violations(message: Message) -> bool:
    return not VALIDATOR.collect_violations(message)


def request_types() -> list[type[Message]]:
    modules = (accounts_pb2, transfers_pb2, echo_pb2)
    return [
        getattr(module, name)
        for module in modules
        for name in module.DESCRIPTOR.message_types_by_name
        if name.endswith("Request")
    ]


def test_every_contract_request_compiles_but_the_one_with_a_cel_rule() -> None:
    uncompiled = {cls.DESCRIPTOR.full_name for cls in request_types() if compile_rules(cls) is None}
    assert uncompiled == {"ledger.v1.CreateTransferRequest"}


ACCOUNT = str(uuid.uuid4())
VALID_REQUESTS = [
    echo_pb2.EchoRequest(message="hello", delay_ms=5),
    echo_pb2.StoreRequest(request_id="r-1", value="v"),
    accounts_pb2.OpenAccountRequest(request_id="o-1", owner="Ada", currency_code="EUR"),
    accounts_pb2.GetAccountRequest(account_id=ACCOUNT),
    accounts_pb2.DepositRequest(
        request_id=str(uuid.uuid4()),
        account_id=ACCOUNT,
        amount=money_pb2.Money(currency_code="EUR", minor_units=30),
    ),
    accounts_pb2.WithdrawRequest(
        request_id="w1",
        account_id=ACCOUNT,
        amount=money_pb2.Money(currency_code="EUR", minor_units=50),
        memo="rent",
    ),
    transfers_pb2.GetTransferRequest(transfer_id=ACCOUNT),
]


@pytest.mark.parametrize("request_message", VALID_REQUESTS, ids=lambda m: type(m).__name__)
def test_valid_requests_take_the_fast_path(request_message: Message) -> None:
    valid = compile_rules(type(request_message))
    assert valid is not None
    assert no_violations(request_message)
    assert valid(request_message) is True


def test_other_types_and_undecodable_bytes_are_never_valid() -> None:
    valid = compile_rules(echo_pb2.EchoRequest)
    assert valid is not None
    assert valid(echo_pb2.NotifyRequest(message="hello")) is False
    assert valid(Undecodable(3)) is False  # type: ignore[arg-type]


COMPILED_REQUEST_TYPES = [cls for cls in request_types() if compile_rules(cls) is not None]


@pytest.mark.parametrize("cls", COMPILED_REQUEST_TYPES, ids=lambda cls: cls.DESCRIPTOR.name)
def test_contract_requests_agree_with_protovalidate(cls: type[Message]) -> None:
    valid = compile_rules(cls)
    assert valid is not None

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(message_strategy(cls.DESCRIPTOR))
    def agree(message: Message) -> None:
        assert valid(message) == no_violations(message), message

    agree()


# -- synthetic contracts: one rule per message ---------------------------------------------


STRING, INT32, INT64, UINT64, SINT32 = (
    Field.TYPE_STRING,
    Field.TYPE_INT32,
    Field.TYPE_INT64,
    Field.TYPE_UINT64,
    Field.TYPE_SINT32,
)
BOOL, BYTES, ENUM, MESSAGE, DOUBLE = (
    Field.TYPE_BOOL,
    Field.TYPE_BYTES,
    Field.TYPE_ENUM,
    Field.TYPE_MESSAGE,
    Field.TYPE_DOUBLE,
)
PATTERN = "^[a-c]+(?:-[0-9]{2,3})?$"
SEARCHED = r"\d+\.\w*"
RUN = "^[a-c]+$"  # linear on Python's re: runs there
NESTED = "^(?:[a-c]+-?)+$"  # exponential on Python's re: runs on RE2
IF_ZERO, ALWAYS = validate_pb2.IGNORE_IF_ZERO_VALUE, validate_pb2.IGNORE_ALWAYS
AFFIXES = {"prefix": "ab", "suffix": "yz", "contains": "m", "not_contains": "q"}
CEL = [{"id": "x", "message": "x", "expression": "this != 'x'"}]


# name: (field type, rules, how the field is declared)
def rules(**kinds: Any) -> Rules:
    """FieldRules from plain values: `rules(string={"min_len": 2})`."""
    return Rules(**kinds)


COMPILED: dict[str, tuple[int, Rules, str]] = {
    "StrLen": (STRING, rules(string={"min_len": 2}), "plain"),
    "StrMax": (STRING, rules(string={"max_len": 3}), "plain"),
    "StrExact": (STRING, rules(string={"len": 2}), "plain"),
    "StrBytes": (STRING, rules(string={"min_bytes": 2, "max_bytes": 4}), "plain"),
    "StrLenBytes": (STRING, rules(string={"len_bytes": 3}), "plain"),
    "StrAffix": (STRING, rules(string=AFFIXES), "plain"),
    "StrIn": (STRING, rules(string={"in": ["a", "bb"]}), "plain"),
    "StrNotIn": (STRING, rules(string={"not_in": ["", "x"]}), "plain"),
    "StrConst": (STRING, rules(string={"const": "k"}), "plain"),
    "StrUuid": (STRING, rules(string={"uuid": True}), "plain"),
    "StrPattern": (STRING, rules(string={"pattern": PATTERN}), "plain"),
    "StrSearch": (STRING, rules(string={"pattern": SEARCHED}), "plain"),
    "StrRun": (STRING, rules(string={"pattern": RUN}), "plain"),
    "StrNested": (STRING, rules(string={"pattern": NESTED}), "plain"),
    "Int32Range": (INT32, rules(int32={"gt": -5, "lte": 7}), "plain"),
    "Int64Exclusive": (INT64, rules(int64={"gt": 10, "lt": 5}), "plain"),
    "Int64Gte": (INT64, rules(int64={"gte": 3}), "plain"),
    "UInt64In": (UINT64, rules(uint64={"in": [1, 2, 3]}), "plain"),
    "SInt32NotIn": (SINT32, rules(sint32={"not_in": [0, 4]}), "plain"),
    "SInt32Const": (SINT32, rules(sint32={"const": -2}), "plain"),
    "BoolConst": (BOOL, rules(bool={"const": True}), "plain"),
    "BytesRules": (BYTES, rules(bytes={"min_len": 1, "max_len": 3, "prefix": b"\x01"}), "plain"),
    "BytesIn": (BYTES, rules(bytes={"in": [b"a", b""]}), "plain"),
    "EnumDefined": (ENUM, rules(enum={"defined_only": True}), "plain"),
    "EnumNotIn": (ENUM, rules(enum={"not_in": [0]}), "plain"),
    "Optional": (STRING, rules(string={"min_len": 3}), "optional"),
    "OneofMember": (INT32, rules(int32={"gt": 0}), "oneof"),
    "IgnoreZero": (STRING, rules(string={"min_len": 2}, ignore=IF_ZERO), "plain"),
    "IgnoreAlways": (STRING, rules(string={"min_len": 9}, ignore=ALWAYS), "plain"),
    "RequiredStr": (STRING, rules(required=True), "plain"),
    "RequiredOptional": (STRING, rules(required=True), "optional"),
    "RequiredInner": (MESSAGE, rules(required=True), "plain"),
    "NestedInner": (MESSAGE, rules(), "plain"),
    "RepeatedInner": (MESSAGE, rules(), "repeated"),
    "MapInner": (MESSAGE, rules(), "map"),
}
NOT_COMPILED: dict[str, tuple[int, Rules, str]] = {
    "Email": (STRING, rules(string={"email": True}), "plain"),
    "FieldCel": (STRING, rules(cel=CEL), "plain"),
    "Double": (DOUBLE, rules(double={"gt": 0}), "plain"),
    "RepeatedItems": (STRING, rules(repeated={"min_items": 1}), "repeated"),
    "Whitespace": (STRING, rules(string={"pattern": r"^\s+$"}), "plain"),
    "PosixClass": (STRING, rules(string={"pattern": "[[:alpha:]]"}), "plain"),
    "OpenRepeat": (STRING, rules(string={"pattern": "a{,3}"}), "plain"),
    "Flags": (STRING, rules(string={"pattern": "(?i)abc"}), "plain"),
    "Possessive": (STRING, rules(string={"pattern": "a*+"}), "plain"),
    "WrongKind": (INT32, rules(string={"min_len": 1}), "plain"),
    "RequiredIgnoring": (STRING, rules(required=True, ignore=IF_ZERO), "plain"),
}


def _field(message: descriptor_pb2.DescriptorProto, kind: int, rules: Rules, shape: str) -> None:
    field = message.field.add(name="f", number=1, type=kind, label=Field.LABEL_OPTIONAL)
    if kind == MESSAGE:
        field.type_name = ".synthetic.v1.Inner"
    if kind == ENUM:
        field.type_name = ".synthetic.v1.Color"
    if shape == "optional":
        field.proto3_optional = True
        field.oneof_index = 0
        message.oneof_decl.add(name="_f")
    elif shape == "oneof":
        field.oneof_index = 0
        message.oneof_decl.add(name="choice")
        message.field.add(name="other", number=2, type=STRING, oneof_index=0, label=1)
    elif shape == "repeated":
        field.label = Field.LABEL_REPEATED
    elif shape == "map":
        entry = message.nested_type.add(name="FEntry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=STRING, label=Field.LABEL_OPTIONAL)
        entry.field.add(
            name="value", number=2, type=MESSAGE, type_name=".synthetic.v1.Inner", label=1
        )
        field.label = Field.LABEL_REPEATED
        field.type_name = ".synthetic.v1.M_MapInner.FEntry"
    if rules.ListFields():
        field.options.Extensions[validate_pb2.field].CopyFrom(rules)


def _synthetic_pool() -> descriptor_pool.DescriptorPool:
    file = descriptor_pb2.FileDescriptorProto(
        name="synthetic/v1/rules.proto",
        package="synthetic.v1",
        syntax="proto3",
        dependency=["buf/validate/validate.proto"],
    )
    color = file.enum_type.add(name="Color")
    for number, name in enumerate(("COLOR_UNSPECIFIED", "COLOR_RED", "COLOR_BLUE")):
        color.value.add(name=name, number=number)
    inner = file.message_type.add(name="Inner")
    code = inner.field.add(name="code", number=1, type=STRING, label=Field.LABEL_OPTIONAL)
    code.options.Extensions[validate_pb2.field].string.min_len = 2
    for name, (kind, rules, shape) in {**COMPILED, **NOT_COMPILED}.items():
        _field(file.message_type.add(name=f"M_{name}"), kind, rules, shape)
    cel = file.message_type.add(name="M_MessageCel")
    cel.field.add(name="f", number=1, type=STRING, label=Field.LABEL_OPTIONAL)
    cel.options.Extensions[validate_pb2.message].cel.add(
        id="m", message="m", expression="this.f != 'x'"
    )
    loop = file.message_type.add(name="M_Recursive")
    loop.field.add(name="f", number=1, type=STRING, label=Field.LABEL_OPTIONAL).options.Extensions[
        validate_pb2.field
    ].string.min_len = 1
    loop.field.add(
        name="next", number=2, type=MESSAGE, type_name=".synthetic.v1.M_Recursive", label=1
    )
    pool = descriptor_pool.Default()  # protovalidate resolves the rules through the same pool
    pool.Add(file)
    return pool


POOL = _synthetic_pool()


def synthetic(name: str) -> type[Message]:
    descriptor = POOL.FindMessageTypeByName(f"synthetic.v1.M_{name}")
    message_class: type[Message] = message_factory.GetMessageClass(descriptor)
    return message_class


EDGE_STRINGS = ["", "a", "ab", "abc", "abcd", "k", "x", "bb", "abmyz", "abmqyz", "é", "€€", "😀"]
EDGE_STRINGS += ["ab-12", "abc-1234", "ABC", "ab\n", "1.x", "a\n1.x", "1.", str(uuid.uuid4())]
EDGE_STRINGS += [str(uuid.uuid4()).upper(), uuid.uuid4().hex, str(uuid.uuid4())[:-1] + "g"]
EDGES: dict[int, list[Any]] = {
    STRING: EDGE_STRINGS,
    INT32: list(range(-8, 12)),
    INT64: list(range(-2, 14)),
    UINT64: list(range(6)),
    SINT32: list(range(-3, 6)),
    BOOL: [False, True],
    BYTES: [b"", b"a", b"\x01", b"\x01ab", b"\x01abc"],
    ENUM: list(range(-1, 5)),
}
STRINGS = st.one_of(
    st.sampled_from(EDGE_STRINGS),
    st.text(max_size=8),
    st.from_regex(PATTERN),
    st.from_regex(SEARCHED),
)
VALUES: dict[int, st.SearchStrategy[Any]] = {
    STRING: STRINGS,
    INT32: st.integers(-(2**31), 2**31 - 1) | st.integers(-8, 12),
    INT64: st.integers(-(2**63), 2**63 - 1) | st.integers(-2, 14),
    UINT64: st.integers(0, 2**64 - 1) | st.integers(0, 5),
    SINT32: st.integers(-(2**31), 2**31 - 1) | st.integers(-3, 5),
    BOOL: st.booleans(),
    BYTES: st.binary(max_size=5) | st.sampled_from([b"", b"a", b"\x01", b"\x01ab", b"\x01abc"]),
    ENUM: st.integers(-1, 4),
}


def values_for(name: str, kind: int, shape: str) -> st.SearchStrategy[Any]:
    if kind == MESSAGE:
        inner = POOL.FindMessageTypeByName("synthetic.v1.Inner")
        cls = message_factory.GetMessageClass(inner)
        inners = st.builds(cls, code=STRINGS)
        if shape == "repeated":
            return st.lists(inners, max_size=3)
        if shape == "map":
            return st.dictionaries(st.text(max_size=2), inners, max_size=3)
        return st.none() | inners
    if shape in ("optional", "oneof"):
        return st.none() | VALUES[kind]  # None: the field is left unset
    return VALUES[kind]


def build(cls: type[Message], kind: int, shape: str, value: Any) -> Any:
    message: Any = cls()
    if value is None:
        return message
    target = message.f
    if shape == "repeated":
        target.extend(value)
    elif shape == "map":
        for key, inner in value.items():
            target[key].CopyFrom(inner)
    elif kind == MESSAGE:
        target.CopyFrom(value)
    else:
        message.f = value
    return message


def only_sound(name: str, value: Any) -> bool:
    """Cases where the compiler is stricter than protovalidate, by design."""
    return name == "Int64Exclusive" or (name == "StrSearch" and "\n" in value)


@pytest.mark.parametrize("name", sorted(COMPILED))
def test_each_compiled_rule_agrees_with_protovalidate(name: str) -> None:
    kind, _, shape = COMPILED[name]
    cls = synthetic(name)
    valid = compile_rules(cls)
    assert valid is not None, name
    seen: set[bool] = set()

    def check(value: Any) -> None:
        message = build(cls, kind, shape, value)
        expected, answer = no_violations(message), valid(message)
        seen.add(expected)
        if only_sound(name, value):
            assert not answer or expected, (name, value)
        else:
            assert answer == expected, (name, value)

    for value in EDGES.get(kind, ()):
        check(value)
    settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))(
        given(values_for(name, kind, shape))(check)
    )()
    if name != "IgnoreAlways":
        assert seen == {True, False}, f"{name}: the strategies must reach both outcomes"


def test_a_pattern_that_backtracks_in_re_is_matched_in_linear_time() -> None:
    """On Python's re, NESTED takes exponential time (`^(a+)+$` took 11 s on 29
    characters); a request must never block the server on a contract's pattern."""
    cls = synthetic("StrNested")
    valid = compile_rules(cls)
    assert valid is not None
    hostile = build(cls, STRING, "plain", "a" * 60 + "!")

    def too_slow(signum: int, frame: Any) -> None:
        raise TimeoutError("the pattern backtracked")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.setitimer(signal.ITIMER_REAL, 10)  # microseconds on RE2; ages on re
    try:
        assert valid(hostile) is False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize(
    ("pattern", "linear"),
    [
        (RUN, True),
        ("^[A-Z]{3}$", True),
        ("^[!-~]+$", True),
        ("^[^]a]*x$", True),  # a class's first ] is a literal
        (NESTED, False),
        (PATTERN, False),  # a group
        (SEARCHED, False),  # not anchored: search tries every start
        ("^a+b*$", False),  # two quantifiers of variable count
        ("^a{2,3}b+$", False),
        ("^a{2,3}b$", True),
        ("^[a-z]{2,3}-[0-9]{4}$", True),
        ("^[a-z]*[a-z]{999}$", False),  # each backtrack step re-matches a long rest
        ("^[a-z]+" + "x" * 40 + "$", False),
        ("^a|b$", False),
    ],
)
def test_only_patterns_linear_in_re_run_there(pattern: str, linear: bool) -> None:
    assert _linear_in_re(pattern) is linear


@pytest.mark.parametrize("name", [*sorted(NOT_COMPILED), "MessageCel", "Recursive"])
def test_rules_outside_the_subset_are_left_to_protovalidate(name: str) -> None:
    cls = synthetic(name)
    assert compile_rules(cls) is None
