# The presence dataflow. Not exercised by CI (no Docker engine there); see README "Docker".
#
# Base image pinned by tag and digest: the digest is the multi-platform index of
# python:3.11.16-slim-bookworm as published in the Docker Official Images' record
# (docker-library/repo-info, python 3.11-slim-bookworm at Python 3.11.16). It could not
# be pulled or verified from the build machine (no access to the image registry);
# to move it: docker pull python:3.11.X-slim-bookworm, then put the RepoDigest here.
FROM python:3.11.16-slim-bookworm@sha256:0bee7276f83efd4a1ee05bbbf4281d95ed28e079220a9457f25a93e3f1e3c31b

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Dependencies from the lock file only, every download checked against its sha256
# (requirements.lock: the runtime dependencies and the build backend; `make lock`).
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md dataflow.py ./
# presence/_native*.so is in .dockerignore: no Rust here, the image runs the
# pure-Python partition reader (README "Install": same outcomes, slower).
COPY presence ./presence
COPY docker/entrypoint.sh /usr/local/bin/presence-entrypoint
# The project itself, built with the locked setuptools, nothing else fetched.
RUN pip install --no-deps --no-build-isolation . \
 && useradd --create-home --uid 10001 presence \
 && mkdir -p /recovery \
 && chown presence /recovery \
 && chmod 755 /usr/local/bin/presence-entrypoint

USER presence
# bytewax's recovery partitions (state and Kafka offsets): keep them across restarts.
VOLUME ["/recovery"]
ENV PRESENCE_RECOVERY_PARTITIONS=4

# The entrypoint makes the recovery partitions once, then runs the command.
ENTRYPOINT ["presence-entrypoint"]
CMD ["python", "-m", "bytewax.run", "dataflow", "-w", "2", "-r", "/recovery", "-s", "5", "-b", "0"]
