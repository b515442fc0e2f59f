# edgetoken: one image for the issuer and the verifiers (`edgetoken serve --role ...`).
FROM rust:1.95-bookworm AS build
WORKDIR /src
# askama.toml tells the template engine where the tokens page's templates are.
COPY Cargo.toml Cargo.lock askama.toml ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
RUN cargo build --release --locked --bin edgetoken

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/edgetoken edgetoken \
    && mkdir -p /keys /etc/edgetoken \
    && chown edgetoken /keys
COPY --from=build /src/target/release/edgetoken /usr/local/bin/edgetoken
USER edgetoken
# JWKS over https uses the bundled webpki roots (rustls); no system CA bundle is needed.
# `rediss://` trusts the system's roots instead (so a private CA can be added): mount the CA
# and set SSL_CERT_FILE to it.
ENTRYPOINT ["edgetoken"]
CMD ["serve"]
