# CI only, never shipped. Stands in for python:3.11.11-slim-bookworm (docker/mlflow-server.Dockerfile): Debian 12,
# root, `python` and `pip` on PATH, `pip install` into the image's own Python. Debian's python3.11 (3.11.2), in a
# venv on PATH because Debian's pip refuses system-wide installs.
FROM localhost/workbench-ci-base:bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /usr/local/python
ENV PATH=/usr/local/python/bin:$PATH
CMD ["python3"]
