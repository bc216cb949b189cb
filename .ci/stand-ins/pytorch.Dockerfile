# CI only, never shipped. Stands in for pytorch/pytorch:<torch>-cuda…-runtime (docker/Dockerfile's BASE_IMAGE): root,
# apt, `python` and `pip` on PATH with torch installed. Here torch is the CPU wheel from the machine's wheel folder,
# mounted into the build (`podman build -v`); there is no CUDA in it.
ARG PYTHON_IMAGE=localhost/workbench-ci-python:bookworm
FROM ${PYTHON_IMAGE}
ARG TORCH_VERSION
ARG TORCH_WHEELS
RUN pip install --no-cache-dir --find-links "${TORCH_WHEELS}" "torch==${TORCH_VERSION}"
