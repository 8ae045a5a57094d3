# Stand-in for postgres:16 (no registry is reachable from the test machines): Debian bookworm's
# PostgreSQL with an entrypoint that, like the official image's, creates POSTGRES_USER with
# POSTGRES_PASSWORD and POSTGRES_DB on first start, keeps the cluster in /var/lib/postgresql/data
# (a volume), listens on 0.0.0.0:5432 and has pg_isready on PATH.
ARG BASE
FROM ${BASE}
ENV LANG=C.UTF-8 PGDATA=/var/lib/postgresql/data
RUN ln -s /usr/lib/postgresql/*/bin/* /usr/local/bin/ && pg_isready --version \
 && mkdir -p /var/run/postgresql "$PGDATA" && chown -R postgres:postgres /var/run/postgresql "$PGDATA"
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/postgresql/data
ENTRYPOINT ["docker-entrypoint.sh"]
STOPSIGNAL SIGINT
EXPOSE 5432
CMD ["postgres"]
