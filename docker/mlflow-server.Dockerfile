# The MLflow tracking server of docker/compose.yaml: PostgreSQL driver and the basic-auth extra included.
FROM python:3.11.11-slim-bookworm

ARG MLFLOW_VERSION=3.17.2
RUN pip install --no-cache-dir "mlflow[auth]==${MLFLOW_VERSION}" "psycopg2-binary==2.9.10" \
    && useradd --create-home --uid 1000 mlflow \
    && mkdir -p /mlartifacts /mlauth \
    && chown mlflow:mlflow /mlartifacts /mlauth

COPY docker/mlflow-auth.ini /etc/mlflow/auth.ini
# Numeric: the host and volume permissions see the UID, not the name.
USER 1000:1000
WORKDIR /home/mlflow
EXPOSE 5000
