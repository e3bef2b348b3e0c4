#!/usr/bin/env bash
# Makes sure what the tests need is here: git, a running Docker engine,
# Chromium (the status page is tested in it), Mosquitto (the tests start
# their own brokers on loopback) and docker-compose (the old stack a
# takeover is tested on). Installs and starts only what is missing.
set -euo pipefail

need_apt=()
command -v git >/dev/null || need_apt+=(git)
command -v curl >/dev/null || need_apt+=(curl)
command -v docker >/dev/null || need_apt+=(docker.io)
command -v chromium >/dev/null || need_apt+=(chromium)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v docker-compose >/dev/null || need_apt+=(docker-compose)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "test-setup: installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

if ! docker info >/dev/null 2>&1; then
  echo "test-setup: Docker engine not answering; starting it"
  if command -v service >/dev/null && service docker start >/dev/null 2>&1; then :
  elif command -v dockerd >/dev/null; then
    (dockerd >/tmp/labsync-dockerd.log 2>&1 &)
  fi
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { echo "test-setup: the Docker engine did not start (see /tmp/labsync-dockerd.log)"; exit 1; }
fi
echo "test-setup: $(go version), Docker engine $(docker version --format '{{.Server.Version}}')"
