# crowdsec-milter. pymilter is compiled against libmilter in the build stage; the final
# image carries the wheels and libmilter's runtime library, and no compiler.
FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libmilter-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY milter ./milter
# Wheels of crowdsec-milter and of everything it needs (pymilter built here).
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# The uid is fixed: the crowdsec service hands the bouncer key to it (KEY_OWNER in
# docker-compose.yml). 10001 is above the system range (SYS_UID_MAX 999), so the account is
# made as a plain one without a home (--system would warn about the range).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libmilter1.0.1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 milter \
 && useradd --uid 10001 --gid milter --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin milter \
 && mkdir -p /var/log/crowdsec-milter /var/lib/crowdsec-milter \
 && chown milter:milter /var/log/crowdsec-milter /var/lib/crowdsec-milter
COPY --from=build /wheels /wheels
# root is the only user here while building: pip's warning about it does not apply
RUN pip install --no-cache-dir --no-index --root-user-action=ignore /wheels/*.whl \
 && rm -rf /wheels
COPY docker/milter-entrypoint.sh docker/healthcheck.py /usr/local/lib/crowdsec-milter/
USER milter
ENV PYTHONUNBUFFERED=1 \
    CROWDSEC_MILTER_SOCKET=inet:8895@0.0.0.0 \
    CROWDSEC_MILTER_API_KEY_FILE=/run/secrets/crowdsec-milter/key \
    CROWDSEC_MILTER_EVENT_LOG=/var/log/crowdsec-milter/events.log \
    CROWDSEC_MILTER_METRICS_LISTEN=0.0.0.0:9395
EXPOSE 8895 9395
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "/usr/local/lib/crowdsec-milter/healthcheck.py"]
ENTRYPOINT ["/bin/sh", "/usr/local/lib/crowdsec-milter/milter-entrypoint.sh"]
