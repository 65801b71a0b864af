"""Code generation from the contracts in `proto/`.

`python -m codegen` (what `make codegen` runs) turns every `.proto` into
message classes, grpc stubs, mypy stubs and, through our own protoc plugin
(`codegen.plugin`), a typed async servicer base and client per service.
"""
