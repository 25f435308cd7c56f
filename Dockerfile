# syntax=docker/dockerfile:1
# One image for all five Pulse functions; FUNCTION_TARGET picks the function
# and `pulse serve` runs it (gunicorn on $PORT, default 8080).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH}
WORKDIR /src
COPY pyproject.toml README.md ./
COPY functions ./functions
RUN pip install .

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 pulse \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin pulse
COPY --from=build /opt/venv /opt/venv
COPY migrations /opt/pulse/migrations
COPY docs/openapi /opt/pulse/docs/openapi
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8080
# `pulse migrate` looks for migrations/ and every function for docs/openapi/
# relative to the installed package.
RUN ln -s /opt/pulse/migrations \
      "$(python -c 'from pulse.storage.migrations import migrations_root; print(migrations_root())')" \
 && root="$(python -c 'from pulse.web.http import OPENAPI_DIR; print(OPENAPI_DIR.parent.parent)')" \
 && mkdir -p "$root/docs" && ln -s /opt/pulse/docs/openapi "$root/docs/openapi"
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080
CMD ["pulse", "serve"]
