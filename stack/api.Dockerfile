# The calapi inference service. Build context: the checkout root.
#
# The model is not baked in: compose mounts the trained artifacts folder (CALOPS_ARTIFACTS on
# the host) read-only at /models, so retraining never needs a rebuild. CALOPS_MODEL may also
# name a registry model (models:/calories@champion), read from MLFLOW_TRACKING_URI.
#
# PYTHON_IMAGE and PIP_INSTALL_ARGS exist for the offline build (stack/offline/prepare.sh):
# a local Debian base and a local wheel index instead of Docker Hub and PyPI.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# The dependency list alone, so that only a change to it reinstalls the dependencies: the model
# (the base install) and the `serve` extra, not the command line's MLflow server or Docker client.
FROM ${PYTHON_IMAGE} AS requirements
COPY pyproject.toml /src/
RUN python3 -c "import tomllib; p = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']; print(*p['dependencies'], *p['optional-dependencies']['serve'], sep='\n')" > /requirements.txt

FROM ${PYTHON_IMAGE} AS build
ARG PIP_INSTALL_ARGS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY --from=requirements /requirements.txt /tmp/requirements.txt
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install ${PIP_INSTALL_ARGS} hatchling -r /tmp/requirements.txt
# .dockerignore lets only pyproject.toml, README.md, config.yaml, src/ and stack/ through.
COPY . /src/
# Then what only installing needs leaves: hatchling, pip and setuptools (nothing installs into
# a running API), and the libraries' own test suites (pandas, scipy, numba, numpy: about
# 120 MB that no import reaches).
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation /src \
 && /opt/venv/bin/python -m pip uninstall -y hatchling pip setuptools \
 && find /opt/venv/lib -depth -type d -name tests -path '*/site-packages/*/tests' -exec rm -rf {} + \
 && find /opt/venv/bin -name 'pip*' -delete

# Final image: the interpreter and the venv only; no compilers, no build tools, no root.
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 calops \
 && useradd --system --uid 10001 --gid calops --no-create-home --home-dir /nonexistent calops
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CALOPS_MODEL=/models
USER calops
WORKDIR /tmp
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=6 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
CMD ["uvicorn", "--factory", "calapi.serving.app:create_app", "--host", "0.0.0.0", "--port", "8000", "--no-access-log"]
