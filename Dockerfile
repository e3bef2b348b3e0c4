# The labsync image: labsync and labsync-agent, static and stripped, on
# FROM scratch with CA certificates (for HTTPS git remotes and GitHub).
# No shell, no package manager, nothing else. See docs/operations.md.
#
#   docker build -t labsync \
#     --build-arg VERSION=$(git describe --tags --always --dirty) \
#     --build-arg COMMIT=$(git rev-parse HEAD) .
#
# Without a registry, `make image` builds the same final stage from
# binaries made by the local Go toolchain (it copies this file's FROM
# scratch stage and gives it the files the build stage would have made).
#
# No USER: labsync drives the Docker engine through the socket mounted from
# the host, which only root or the host's docker group may use, and that
# group's ID differs from host to host, so no user named here would work
# everywhere. A user who may use the socket is root on the host anyway
# (docs/security.md).

FROM golang:1.26 AS build
ARG VERSION=dev
ARG COMMIT=
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false \
      -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" \
      -o /out/ ./cmd/labsync ./cmd/labsync-agent

FROM scratch
ARG VERSION=dev
ARG COMMIT=
LABEL org.opencontainers.image.title="labsync" \
      org.opencontainers.image.description="GitOps reconciler for Testflinger device labs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}"
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/labsync /out/labsync-agent /
EXPOSE 9631
ENTRYPOINT ["/labsync"]
CMD ["serve"]
