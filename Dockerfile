# The presence dataflow. Not exercised by CI (no Docker engine there); see README "Docker".
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md dataflow.py ./
COPY presence ./presence
COPY docker/entrypoint.sh /usr/local/bin/presence-entrypoint
RUN pip install . \
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
