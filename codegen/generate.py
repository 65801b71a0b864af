"""`make codegen`: regenerate `gen/` from `proto/`, check drift, build buf images.

- `python -m codegen` rewrites `gen/` (the one import root of generated code):
  message classes (`_pb2.py`), grpc stubs (`_pb2_grpc.py`), mypy stubs
  (`.pyi`, mypy-protobuf) and our `_platform.py` modules (codegen.plugin).
  The old tree is replaced whole, so a removed `.proto` leaves nothing behind.
- `python -m codegen --check` generates into a temporary tree and fails,
  listing the files, if it differs from `gen/` (the drift check of the tests).
- `python -m codegen --image FILE` writes a protoc-built image (descriptor set
  with imports and source info) that `buf lint` and `buf breaking` read; buf
  cannot build one itself here because `buf.validate` is not fetchable.

protoc is grpcio-tools' own, run in-process; the plugins run as processes.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from grpc_tools import protoc

from codegen.validate_descriptors import VALIDATE_PROTO, validate_descriptor_set

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
GEN_DIR = ROOT / "gen"
_BIN = Path(sys.executable).parent


class CodegenError(Exception):
    pass


def _protoc(arguments: Sequence[str]) -> None:
    include = Path(protoc.__file__).parent / "_proto"
    status = protoc.main(["protoc", f"-I{include}", *arguments])
    if status != 0:
        raise CodegenError(f"protoc failed (exit {status}) on: {' '.join(arguments)}")


def _plugin(name: str) -> str:
    path = _BIN / f"protoc-gen-{name}"
    if not path.exists():
        raise CodegenError(f"{path} is missing: install the project with its [codegen] extra")
    return f"--plugin=protoc-gen-{name}={path}"


def contract_files(proto_dir: Path) -> list[str]:
    return sorted(str(path.relative_to(proto_dir)) for path in proto_dir.rglob("*.proto"))


def _write_validate_set(directory: Path) -> Path:
    path = directory / "validate.binpb"
    path.write_bytes(validate_descriptor_set().SerializeToString())
    return path


def generate(proto_dir: Path, out_dir: Path) -> None:
    """Writes all generated code for `proto_dir` into the empty directory `out_dir`."""
    with tempfile.TemporaryDirectory() as scratch:
        validate_set = _write_validate_set(Path(scratch))
        out = str(out_dir)
        _protoc(
            [
                f"-I{proto_dir}",
                f"--descriptor_set_in={validate_set}",
                _plugin("mypy"),
                _plugin("mypy_grpc"),
                _plugin("grpcplatform"),
                f"--python_out={out}",
                f"--mypy_out={out}",
                f"--grpc_python_out={out}",
                f"--mypy_grpc_out={out}",
                f"--grpcplatform_out={out}",
                *contract_files(proto_dir),
            ]
        )
        _protoc(
            [
                f"--descriptor_set_in={validate_set}",
                _plugin("mypy"),
                f"--python_out={out}",
                f"--mypy_out={out}",
                VALIDATE_PROTO,
            ]
        )
    for directory in sorted({path.parent for path in out_dir.rglob("*.py")}):
        while directory != out_dir:
            (directory / "__init__.py").touch()
            directory = directory.parent
    for top in out_dir.iterdir():
        if top.is_dir():
            (top / "py.typed").touch()


def build_image(proto_dir: Path, image: Path) -> None:
    """A buf-readable image of our contracts (with imports and source info)."""
    with tempfile.TemporaryDirectory() as scratch:
        validate_set = _write_validate_set(Path(scratch))
        _protoc(
            [
                f"-I{proto_dir}",
                f"--descriptor_set_in={validate_set}",
                f"--descriptor_set_out={image}",
                "--include_imports",
                "--include_source_info",
                *contract_files(proto_dir),
            ]
        )


def drift(proto_dir: Path, gen_dir: Path) -> list[str]:
    """Files that would change if `gen_dir` were regenerated from `proto_dir`."""
    with tempfile.TemporaryDirectory() as scratch:
        fresh = Path(scratch) / "gen"
        fresh.mkdir()
        generate(proto_dir, fresh)
        return _differences(fresh, gen_dir)


def _files(tree: Path) -> set[str]:
    if not tree.exists():
        return set()
    return {
        str(path.relative_to(tree))
        for path in tree.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def _differences(expected: Path, actual: Path) -> list[str]:
    want, have = _files(expected), _files(actual)
    changed = [
        name
        for name in sorted(want & have)
        if not filecmp.cmp(expected / name, actual / name, shallow=False)
    ]
    return sorted(want ^ have) + changed


def regenerate(proto_dir: Path, gen_dir: Path) -> None:
    with tempfile.TemporaryDirectory(dir=gen_dir.parent) as scratch:
        fresh = Path(scratch) / "gen"
        fresh.mkdir()
        generate(proto_dir, fresh)
        if gen_dir.exists():
            shutil.rmtree(gen_dir)
        fresh.rename(gen_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m codegen", description=__doc__.split("\n")[0])
    parser.add_argument("--proto", type=Path, default=PROTO_DIR, help="contracts root")
    parser.add_argument("--out", type=Path, default=GEN_DIR, help="generated code root")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="fail if --out is not up to date")
    mode.add_argument("--image", type=Path, help="write a buf image of the contracts here")
    args = parser.parse_args(argv)
    try:
        if args.image:
            build_image(args.proto.resolve(), args.image.resolve())
        elif args.check:
            stale = drift(args.proto.resolve(), args.out.resolve())
            if stale:
                print("generated code is out of date; run `make codegen`:", file=sys.stderr)
                for name in stale:
                    print(f"  {name}", file=sys.stderr)
                return 1
        else:
            regenerate(args.proto.resolve(), args.out.resolve())
    except CodegenError as error:
        print(f"codegen: {error}", file=sys.stderr)
        return 1
    return 0
