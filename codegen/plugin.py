"""protoc-gen-grpcplatform: our protoc plugin.

For every `.proto` file that declares services it writes `<file>_platform.py`
beside the message module, holding per service:

- `<Service>_METHODS`: the policy table read from the contract (arity,
  protobuf's `idempotency_level`, our `grpcplatform.v1.method_policy`);
- `<Service>Servicer`: an async server base with typed, snake_case methods;
  `rpc_method_handlers()` returns only the methods a subclass overrides (the
  others answer UNIMPLEMENTED from gRPC itself), and the runtime wraps each
  in the server chain and serves it from its method table (server.dispatch);
- `<Service>Client`: a typed async client whose calls go through the
  platform's client chain (`clients.invoker.Invoker`).

Anchors: grpcio's own `_pb2_grpc` generator (names, the handler map it
registers) and connect-python's typed clients. The
plugin reads our custom option from the request's own descriptors, so it never
imports code generated from the contracts it is generating.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.compiler import plugin_pb2

POLICY_EXTENSION = "grpcplatform.v1.method_policy"
PLATFORM_DEFAULT_DEADLINE_MS = 2000

_IDEMPOTENCY = {
    descriptor_pb2.MethodOptions.IDEMPOTENCY_UNKNOWN: "UNKNOWN",
    descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS: "NO_SIDE_EFFECTS",
    descriptor_pb2.MethodOptions.IDEMPOTENT: "IDEMPOTENT",
}
_ARITY = {
    (False, False): "UNARY_UNARY",
    (False, True): "UNARY_STREAM",
    (True, False): "STREAM_UNARY",
    (True, True): "STREAM_STREAM",
}
# FileDescriptorProto field numbers, for source_code_info paths.
_SERVICE_FIELD = 6
_METHOD_FIELD = 2


def snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])|(?<=[A-Z])([A-Z])(?=[a-z])", r"_\1\2", name).lower()


def module_of(proto_file: str) -> str:
    return proto_file.removesuffix(".proto").replace("/", ".") + "_pb2"


def alias_of(proto_file: str) -> str:
    return proto_file.removesuffix(".proto").replace("/", "_").replace("-", "_") + "_pb2"


@dataclass(frozen=True)
class Method:
    name: str
    input_type: str
    output_type: str
    arity: str
    idempotency: str
    default_deadline_ms: int
    doc: str

    @property
    def python_name(self) -> str:
        return snake_case(self.name)

    @property
    def client_streaming(self) -> bool:
        return self.arity.startswith("STREAM")

    @property
    def server_streaming(self) -> bool:
        return self.arity.endswith("STREAM")


class TypeIndex:
    """Maps fully qualified protobuf names to Python expressions and the imports they need."""

    def __init__(self, files: list[descriptor_pb2.FileDescriptorProto]) -> None:
        self._where: dict[str, tuple[str, str]] = {}
        for file in files:
            prefix = f".{file.package}" if file.package else ""
            for message in file.message_type:
                self._index(file.name, prefix, "", message)

    def _index(
        self, file: str, prefix: str, outer: str, message: descriptor_pb2.DescriptorProto
    ) -> None:
        python_path = f"{outer}{message.name}"
        self._where[f"{prefix}.{message.name}"] = (file, python_path)
        for nested in message.nested_type:
            self._index(file, f"{prefix}.{message.name}", f"{python_path}.", nested)

    def file_of(self, full_name: str) -> str:
        return self._where[full_name][0]

    def expression(self, full_name: str) -> str:
        file, python_path = self._where[full_name]
        return f"{alias_of(file)}.{python_path}"


class PolicyReader:
    """Reads our method option from the request's descriptors (no generated code needed)."""

    def __init__(self, files: list[descriptor_pb2.FileDescriptorProto]) -> None:
        pool = descriptor_pool.DescriptorPool()
        for file in files:
            pool.Add(file)
        self._extension: Any = None
        with contextlib.suppress(KeyError):
            self._extension = pool.FindExtensionByName(POLICY_EXTENSION)
        self._options_class = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("google.protobuf.MethodOptions")
        )

    def default_deadline_ms(self, options: descriptor_pb2.MethodOptions) -> int:
        if self._extension is None:
            return PLATFORM_DEFAULT_DEADLINE_MS
        parsed = self._options_class.FromString(options.SerializeToString())
        if not parsed.HasExtension(self._extension):
            return PLATFORM_DEFAULT_DEADLINE_MS
        value: int = parsed.Extensions[self._extension].default_deadline_ms
        return int(value) or PLATFORM_DEFAULT_DEADLINE_MS


def _comments(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    return {
        tuple(location.path): " ".join(location.leading_comments.split())
        for location in file.source_code_info.location
        if location.leading_comments
    }


def _docstring(text: str, fallback: str) -> str:
    body = (text or fallback).replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    return f'"""{body}"""'


class FileWriter:
    def __init__(
        self, file: descriptor_pb2.FileDescriptorProto, types: TypeIndex, policies: PolicyReader
    ) -> None:
        self.file = file
        self.types = types
        self.policies = policies
        self.comments = _comments(file)

    def methods(self, service_index: int) -> Iterator[Method]:
        service = self.file.service[service_index]
        for index, method in enumerate(service.method):
            yield Method(
                name=method.name,
                input_type=method.input_type,
                output_type=method.output_type,
                arity=_ARITY[(method.client_streaming, method.server_streaming)],
                idempotency=_IDEMPOTENCY[method.options.idempotency_level],
                default_deadline_ms=self.policies.default_deadline_ms(method.options),
                doc=self.comments.get((_SERVICE_FIELD, service_index, _METHOD_FIELD, index), ""),
            )

    def render(self) -> str:
        imports = sorted(
            {
                self.types.file_of(name)
                for service in self.file.service
                for method in service.method
                for name in (method.input_type, method.output_type)
            }
        )
        lines = [
            f"# Generated by protoc-gen-grpcplatform from {self.file.name}. DO NOT EDIT.",
            f'"""Typed async servicer bases and clients for {self.file.name}."""',
            "",
            "from __future__ import annotations",
            "",
            "from collections.abc import AsyncIterable, AsyncIterator, Mapping",
            "from typing import Any, ClassVar",
            "",
            "import grpc",
            "",
            "from clients.invoker import Connection, Metadata",
            "from interceptors.policy import Arity, Idempotency, MethodPolicy",
        ]
        for proto_file in imports:
            package, _, module = module_of(proto_file).rpartition(".")
            lines.append(f"from {package} import {module} as {alias_of(proto_file)}")
        lines += [
            "",
            "# Registered methods skip grpc's per-call method lookup; the type stubs predate them.",
            '_REGISTERED: dict[str, Any] = {"_registered_method": True}',
        ]
        for index, service in enumerate(self.file.service):
            lines += self.render_service(index, service)
        return "\n".join(lines) + "\n"

    def render_service(
        self, index: int, service: descriptor_pb2.ServiceDescriptorProto
    ) -> list[str]:
        full_name = f"{self.file.package}.{service.name}" if self.file.package else service.name
        methods = list(self.methods(index))
        table = f"{snake_case(service.name).upper()}_METHODS"
        doc = self.comments.get((_SERVICE_FIELD, index), "")
        out = ["", "", f"{table}: Mapping[str, MethodPolicy] = {{"]
        for method in methods:
            out += [
                f'    "{method.name}": MethodPolicy(',
                f'        service="{full_name}",',
                f'        method="{method.name}",',
                f"        arity=Arity.{method.arity},",
                f"        idempotency=Idempotency.{method.idempotency},",
                f"        default_deadline={method.default_deadline_ms / 1000!r},",
                "    ),",
            ]
        out += ["}", "", ""]
        out += self.render_servicer(service.name, full_name, table, doc, methods)
        out += ["", ""]
        out += self.render_client(service.name, full_name, table, doc, methods)
        return out

    def _types(self, method: Method) -> tuple[str, str]:
        return self.types.expression(method.input_type), self.types.expression(method.output_type)

    def render_servicer(
        self, name: str, full_name: str, table: str, doc: str, methods: list[Method]
    ) -> list[str]:
        out = [
            f"class {name}Servicer:",
            "    "
            + _docstring(
                f"Server base of {full_name}. {doc} Override the methods you serve; "
                "the others answer UNIMPLEMENTED.",
                "",
            ),
            "",
            f'    SERVICE_NAME: ClassVar[str] = "{full_name}"',
            f"    METHODS: ClassVar[Mapping[str, MethodPolicy]] = {table}",
        ]
        for method in methods:
            request, response = self._types(method)
            request_arg = (
                f"request_iterator: AsyncIterator[{request}]"
                if method.client_streaming
                else f"request: {request}"
            )
            result = f"AsyncIterator[{response}]" if method.server_streaming else response
            # A server-streaming override is an async generator; its base is a plain
            # method returning the iterator type, which overrides may narrow.
            keyword = "def" if method.server_streaming else "async def"
            out += [
                "",
                f"    {keyword} {method.python_name}(",
                "        self,",
                f"        {request_arg},",
                "        context: grpc.aio.ServicerContext[Any, Any],",
                f"    ) -> {result}:",
                "        " + _docstring(method.doc, f"{method.name}."),
                "        raise NotImplementedError",
            ]
        out += [
            "",
            "    def rpc_method_handlers(self) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:",
            '        """The handlers of the methods this object overrides, by method name."""',
            "        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}",
        ]
        for method in methods:
            request, response = self._types(method)
            overridden = (
                f"type(self).{method.python_name} is not {name}Servicer.{method.python_name}"
            )
            factory = f"grpc.{method.arity.lower()}_rpc_method_handler"
            out += [
                f"        if {overridden}:",
                f'            handlers["{method.name}"] = {factory}(',
                f"                self.{method.python_name},",
                f"                request_deserializer={request}.FromString,",
                f"                response_serializer={response}.SerializeToString,",
                "            )",
            ]
        out += ["        return handlers"]
        return out

    def render_client(
        self, name: str, full_name: str, table: str, doc: str, methods: list[Method]
    ) -> list[str]:
        out = [
            f"class {name}Client:",
            "    "
            + _docstring(
                f"Typed async client. {doc} Every call goes through the connection's client "
                "chain, which applies the method's policy from the contract.",
                "",
            ),
            "",
            "    def __init__(self, connection: Connection) -> None:",
            "        self._invoker = connection.invoker",
            "        channel = connection.channel",
        ]
        for method in methods:
            request, response = self._types(method)
            multicallable = "".join(part.title() for part in method.arity.split("_"))
            out += [
                f"        self._{method.python_name}: grpc.aio.{multicallable}MultiCallable[",
                f"            {request}, {response}",
                f"        ] = channel.{method.arity.lower()}(",
                f'            "/{full_name}/{method.name}",',
                f"            request_serializer={request}.SerializeToString,",
                f"            response_deserializer={response}.FromString,",
                "            **_REGISTERED,",
                "        )",
            ]
        for method in methods:
            request, response = self._types(method)
            argument = (
                f"requests: AsyncIterable[{request}]"
                if method.client_streaming
                else f"request: {request}"
            )
            result = f"AsyncIterator[{response}]" if method.server_streaming else response
            keyword = "def" if method.server_streaming else "async def"
            call = (
                f"self._invoker.{method.arity.lower()}(self._{method.python_name}, "
                f'{table}["{method.name}"], {argument.split(":")[0]}, '
                "timeout=timeout, metadata=metadata)"
            )
            out += [
                "",
                f"    {keyword} {method.python_name}(",
                "        self,",
                f"        {argument},",
                "        *,",
                "        timeout: float | None = None,",
                "        metadata: Metadata | None = None,",
                f"    ) -> {result}:",
                "        " + _docstring(method.doc, f"{method.name}."),
                f"        return {'' if method.server_streaming else 'await '}{call}",
            ]
        return out


def generate(request: plugin_pb2.CodeGeneratorRequest) -> plugin_pb2.CodeGeneratorResponse:
    response = plugin_pb2.CodeGeneratorResponse(
        supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    )
    files = list(request.proto_file)
    types = TypeIndex(files)
    policies = PolicyReader(files)
    by_name = {file.name: file for file in files}
    for name in request.file_to_generate:
        file = by_name[name]
        if not file.service:
            continue
        response.file.add(
            name=name.removesuffix(".proto") + "_platform.py",
            content=FileWriter(file, types, policies).render(),
        )
    return response


def main() -> None:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    sys.stdout.buffer.write(generate(request).SerializeToString())
