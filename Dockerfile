# The sweep worker image: the project and its dependencies, torch from the CPU wheel index by default.
# GPU image: docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
# Offline (no package index reachable): a folder of wheels inside the build context, holding torch,
# every dependency and setuptools, named by WHEELHOUSE; pip then installs from it alone:
#   pip download -d wheelhouse --extra-index-url https://download.pytorch.org/whl/cpu torch==2.13.0 . setuptools
#   docker build --build-arg WHEELHOUSE=wheelhouse .
FROM python:3.11-slim
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG WHEELHOUSE=
WORKDIR /app
# Without WHEELHOUSE this copies one small file, and pip uses the package indexes as usual.
COPY ${WHEELHOUSE:-pyproject.toml} /tmp/wheelhouse/
RUN if [ -n "$WHEELHOUSE" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/tmp/wheelhouse; fi \
 && pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
# The dependencies before the code, so that a change to the code reinstalls only the project.
COPY pyproject.toml ./
RUN if [ -n "$WHEELHOUSE" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/tmp/wheelhouse; fi \
 && python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
    > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt "torch==${TORCH_VERSION}"
COPY README.md ./
COPY sweeps ./sweeps
COPY objectives ./objectives
COPY storage ./storage
COPY examples ./examples
RUN if [ -n "$WHEELHOUSE" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/tmp/wheelhouse; fi \
 && pip install --no-cache-dir . && rm -rf /tmp/wheelhouse /tmp/requirements.txt
# /app/artifacts: where docker-compose.yml mounts the checkpoint volume that workers and dashboard share.
RUN useradd --create-home sweeper && mkdir -p /app/artifacts && chown sweeper /app/artifacts
USER sweeper
# SIGTERM (docker stop) fails and requeues the running trial; the worker exits within seconds.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "sweeps.run"]
CMD ["examples/digits.yaml"]
