# The sweep worker image: the project and its dependencies, torch from the CPU wheel index by default.
# GPU image: docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
FROM python:3.11-slim
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /app
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md ./
COPY sweeps ./sweeps
COPY objectives ./objectives
COPY storage ./storage
COPY examples ./examples
RUN pip install --no-cache-dir .
RUN useradd --create-home sweeper
USER sweeper
# SIGTERM (docker stop) fails and requeues the running trial; the worker exits within seconds.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "sweeps.run"]
CMD ["examples/digits.yaml"]
