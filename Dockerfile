# The chatfabric binary (every role). Build: docker build -t chatfabric .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin chatfabric

FROM debian:bookworm-slim
# The system's root certificates: the webhook role verifies https:// receivers against them.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --home /data chatfabric && mkdir -p /data && chown chatfabric /data
COPY --from=build /src/target/release/chatfabric /usr/local/bin/chatfabric
USER chatfabric
WORKDIR /data
ENTRYPOINT ["chatfabric"]
