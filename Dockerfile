# job-operator's image: `docker build -t job-operator:0.1.0 .` (make kind-e2e does).
# Two stages: the package and its runtime dependencies are pip-installed into a venv in
# the first; the second copies only that venv onto a fresh base and runs as a non-root
# user. No compilers, no pip cache, no dev dependencies in the result.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/job-operator
WORKDIR /src
# What the build backend needs (pyproject.toml names README.md as the readme), then the code.
COPY pyproject.toml README.md ./
COPY src ./src
# A plain (non-editable) install of the package and its runtime dependencies only,
# then bytecode compiled now: the container's root filesystem is read-only.
RUN /opt/job-operator/bin/pip install --no-compile . \
 && /opt/job-operator/bin/python -m compileall -q -j 0 /opt/job-operator/lib \
 && /opt/job-operator/bin/job-operator --help > /dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="job-operator" \
      org.opencontainers.image.description="Keeps data-plane jobs running; reschedules them on request." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
# A fixed numeric uid/gid, so that Kubernetes can check runAsNonRoot without a passwd lookup.
RUN groupadd --system --gid 10001 job-operator \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin job-operator
# Same base image, same interpreter path: the venv's symlinks stay valid.
COPY --from=build /opt/job-operator /opt/job-operator
ENV PATH=/opt/job-operator/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8080
# `job-operator run` handles SIGTERM: it stops its watches and releases the leader Lease.
# Exec form, so that the signal reaches it (it is PID 1 in the container).
ENTRYPOINT ["job-operator"]
CMD ["run"]
