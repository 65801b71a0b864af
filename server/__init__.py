"""The server runtime: configuration, assembly, health, reflection, admin HTTP, shutdown.

Start a service with `grpc-platform SERVICE` or `python -m server SERVICE`
(see server.main); build one by returning an `Application` from a factory
(server.application).
"""
