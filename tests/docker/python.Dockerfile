# Stand-in for python:3.11-slim (no registry is reachable from the test machines): Debian
# bookworm's Python 3.11 in a virtual environment whose bin comes first on PATH, so `python`,
# `pip` and system-wide `pip install` work as in the official image.
ARG BASE
FROM ${BASE}
ENV LANG=C.UTF-8 PATH=/usr/local/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN python3 -m venv /usr/local/python && python --version && pip --version
CMD ["python3"]
