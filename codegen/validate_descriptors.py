"""The descriptor set of `buf/validate/validate.proto`, taken from protovalidate.

No package ships `validate.proto` as a file and the Buf Schema Registry cannot
be reached, but protovalidate (2.x) embeds the file's serialized
FileDescriptorProto in its generated module. We lift it from there, add the
google/protobuf files it imports (from the protobuf runtime itself), and hand
protoc the set with `--descriptor_set_in`. Departure from buf's usual route
(a `deps:` entry in buf.yaml), forced by the closed network; the result is the
same file, byte for byte, that protovalidate validates against.
"""

from __future__ import annotations

import importlib

from google.protobuf import descriptor_pb2, descriptor_pool

VALIDATE_PROTO = "buf/validate/validate.proto"


def _validate_file() -> descriptor_pb2.FileDescriptorProto:
    # Private module of protovalidate: pinned version, checked by the codegen tests.
    from protovalidate._gen.buf.validate import validate_pb

    return descriptor_pb2.FileDescriptorProto.FromString(validate_pb.desc().proto.to_binary())


def _well_known_file(name: str) -> descriptor_pb2.FileDescriptorProto:
    importlib.import_module(name.removesuffix(".proto").replace("/", ".") + "_pb2")
    proto = descriptor_pb2.FileDescriptorProto()
    descriptor_pool.Default().FindFileByName(name).CopyToProto(proto)
    return proto


def validate_descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """`validate.proto` and its imports, dependencies first (protoc wants that order)."""
    validate = _validate_file()
    files = [_well_known_file(name) for name in validate.dependency]
    files.append(validate)
    return descriptor_pb2.FileDescriptorSet(file=files)
