# The chatfabric binary (every role). Build: docker build -t chatfabric .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin chatfabric

FROM debian:bookworm-slim
RUN useradd --system --home /data chatfabric && mkdir -p /data && chown chatfabric /data
COPY --from=build /src/target/release/chatfabric /usr/local/bin/chatfabric
USER chatfabric
WORKDIR /data
ENTRYPOINT ["chatfabric"]
