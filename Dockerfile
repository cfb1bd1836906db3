# The opensandbox-emulator server, slim. It drives the Docker engine whose socket it is given
# (see docker-compose.yml); nothing of the server goes into the sandboxes' images.
#
#   docker build -t opensandbox-emulator .
#   docker build --build-arg BASE_IMAGE=<a local image with python3.11+, venv and pip> .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY pyproject.toml setup.py README.md /src/
COPY server /src/server
COPY runtimes /src/runtimes
COPY opensandbox_emulator /src/opensandbox_emulator
RUN python3 -m venv /opt/opensandbox \
    && /opt/opensandbox/bin/pip install /src \
    && rm -rf /src

ENV PATH=/opt/opensandbox/bin:$PATH
EXPOSE 8080 44772
# The compose file mounts a config here; without one the server runs the fake runtime.
ENTRYPOINT ["opensandbox-emulator"]
CMD ["--config", "/etc/opensandbox/config.toml"]
