# One image for every service of the platform; the service is chosen by the
# container's argument (CMD) or the SERVICE variable.
#
# Stage 1 builds wheels (the project and its dependencies); stage 2 installs
# them into a slim Python with no compiler, as a fixed non-root user. The
# root filesystem can be read-only: Python writes no bytecode and the only
# writable place the app needs is /tmp (mount an emptyDir there).
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY clients ./clients
COPY interceptors ./interceptors
COPY durable ./durable
COPY codegen ./codegen
COPY services ./services
COPY gen ./gen
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GRPC_PORT=50051 \
    ADMIN_PORT=8081
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --shell /usr/sbin/nologin app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels grpc-platform \
    && rm -rf /wheels
USER 10001:10001
EXPOSE 50051 8081
# Without Kubernetes' probes: the admin port's liveness endpoint.
HEALTHCHECK --interval=10s --timeout=2s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('ADMIN_PORT', '8081') + '/health', timeout=2)"]
# Exec form: SIGTERM from Kubernetes reaches Python, which drains and exits 0.
ENTRYPOINT ["grpc-platform"]
CMD ["accounts"]
