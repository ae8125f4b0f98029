# tessera's container image: a build stage, then a final image of the binary, the shared
# libraries it loads, CA certificates and an unprivileged user; no shell.
#
#   docker build -t tessera .        (or: buildah bud -t tessera .)
#   docker run --rm -p 8443:8443 tessera serve --dev --listen 0.0.0.0:8443
#
# ROOTFS_IMAGE names the image whose /rootfs the final stage takes: the build stage by default;
# the tests pass an image made from a binary they built (`scripts/image-rootfs`), so the same
# final stage is what they check.
ARG ROOTFS_IMAGE=build

FROM docker.io/library/rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tessera \
    && scripts/image-rootfs target/release/tessera /rootfs

FROM ${ROOTFS_IMAGE} AS rootfs

FROM scratch AS runtime
COPY --from=rootfs /rootfs/ /
# The data directory belongs to the image's user (a volume is mounted there on Kubernetes).
# Copied as an item of /var/lib, so --chown applies to the directory itself.
COPY --from=rootfs --chown=65532:65532 /rootfs/var/lib/ /var/lib/
USER 65532:65532
WORKDIR /var/lib/tessera
ENV TESSERA_LOG=info
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/tessera"]
CMD ["serve", "--config", "/etc/tessera/config/tessera.yaml"]
