# Sluice's image built from source, for those with a registry:
#   docker build --build-arg SLUICE_COMMIT=$(git rev-parse --short=12 HEAD) -t sluice .
# (scripts/image builds the same image offline from a local release binary.)
FROM docker.io/library/rust:1-bookworm AS build
WORKDIR /src
# The commit `sluice --version` names (.git is not part of the build context).
ARG SLUICE_COMMIT=unknown
COPY . .
RUN cargo build --release --locked --bin sluice \
 && strip target/release/sluice \
 && mkdir -p /out/etc/sluice /out/etc/gobetween /out/var/lib/sluice \
 && chmod 0700 /out/var/lib/sluice \
 && install -m 0644 contrib/image.toml /out/etc/gobetween/gobetween.toml \
 && ln -s ../gobetween/gobetween.toml /out/etc/sluice/sluice.toml

# The C library and libgcc the binary links, CA certificates, user 65532 and /tmp.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/sluice /usr/bin/sluice
COPY --from=build /out/etc/ /etc/
# ACME's default cache_dir is under it: mount a volume there to keep certificates.
COPY --from=build --chown=65532:65532 /out/var/lib/sluice /var/lib/sluice
USER 65532:65532
EXPOSE 3000 8888
# A file mounted at /etc/sluice/sluice.toml or at GoBetween's
# /etc/gobetween/gobetween.toml is the one that runs (the first links to the second).
HEALTHCHECK --interval=10s --timeout=5s --retries=3 \
  CMD ["/usr/bin/sluice", "health", "-c", "/etc/sluice/sluice.toml"]
ENTRYPOINT ["/usr/bin/sluice"]
CMD ["run", "-c", "/etc/sluice/sluice.toml"]
