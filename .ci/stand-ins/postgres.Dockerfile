# CI only, never shipped. Stands in for postgres:<version>-bookworm (docker/compose.yaml): Debian 12's PostgreSQL 15
# behind an entrypoint that does what the compose file relies on. POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB
# create the role and the database on first start; the data lives in /var/lib/postgresql/data (a volume keeps it);
# `pg_isready` is on PATH; TCP 5432 takes password logins.
FROM localhost/workbench-ci-base:bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql \
    && rm -rf /var/lib/apt/lists/*
ENV PGDATA=/var/lib/postgresql/data \
    PATH=/usr/lib/postgresql/15/bin:$PATH
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
ENTRYPOINT ["bash", "/usr/local/bin/postgres-entrypoint.sh"]
CMD ["postgres"]
