# The MLflow tracking server from pip, for machines that cannot pull ghcr.io/mlflow/mlflow.
# PIP_INSTALL_ARGS points pip at the local wheel index that prepare.sh serves.
ARG BASE_IMAGE=calops-offline/debian:bookworm
FROM ${BASE_IMAGE}
ARG MLFLOW_VERSION=3.17.2
ARG PIP_INSTALL_ARGS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install ${PIP_INSTALL_ARGS} "mlflow==${MLFLOW_VERSION}" \
 && groupadd --system --gid 10001 mlflow \
 && useradd --system --uid 10001 --gid mlflow --no-create-home --home-dir /mlflow mlflow \
 && mkdir -p /mlflow \
 && chown mlflow:mlflow /mlflow
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER mlflow
WORKDIR /mlflow
EXPOSE 5000
CMD ["mlflow", "server", "--host=0.0.0.0", "--port=5000"]
