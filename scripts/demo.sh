#!/usr/bin/env bash
# make demo: converge a small lab on this Docker host with nothing pulled.
#
# The demo lab (testdata/demo-lab) has three agents and a Testflinger server.
# Both run a stand-in program (testdata/standin), built here as a static Go
# binary into a FROM scratch image that labsync builds from the lab's own
# build context. The image holds no labsync-agent: labsync finds
# bin/labsync-agent next to bin/labsync and mounts it read-only at
# /opt/labsync in every agent container, where it supervises the stand-in
# and serves its healthcheck. The stand-in logs like testflinger-agent.
set -euo pipefail
cd "$(dirname "$0")/.."

LAB=labsync-demo
WORK=.demo/lab

clean() {
  echo "==> Removing everything labelled io.labsync.lab=$LAB"
  ids=$(docker ps -aq --filter "label=io.labsync.lab=$LAB")
  [ -n "$ids" ] && docker rm -f $ids >/dev/null
  nets=$(docker network ls -q --filter "label=io.labsync.lab=$LAB")
  [ -n "$nets" ] && docker network rm $nets >/dev/null
  vols=$(docker volume ls -q --filter "label=io.labsync.lab=$LAB")
  [ -n "$vols" ] && docker volume rm $vols >/dev/null
  imgs=$(docker images -q --filter "label=io.labsync.lab=$LAB" | sort -u)
  [ -n "$imgs" ] && docker rmi -f $imgs >/dev/null
  rm -rf .demo
  echo "    done"
}

if [ "${1:-}" = clean ]; then clean; exit 0; fi

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

scripts/test-setup.sh >/dev/null
step "Building labsync, labsync-agent and the stand-in agent (static Go binaries)"
go build -trimpath -o bin/labsync ./cmd/labsync
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o bin/labsync-agent ./cmd/labsync-agent
rm -rf "$WORK" && mkdir -p "$WORK"
cp -r testdata/demo-lab/. "$WORK/"
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$WORK/images/standin/standin" ./testdata/standin
echo "    bin/labsync, bin/labsync-agent (found next to labsync), $WORK (a copy of testdata/demo-lab)"

step "labsync validate $WORK"
bin/labsync validate "$WORK"

step "labsync plan $WORK"
bin/labsync plan "$WORK"

step "labsync apply $WORK   (build log on stderr is kept in .demo/apply.log)"
bin/labsync apply "$WORK" 2>.demo/apply.log

step "What runs now (containers labelled for lab $LAB)"
docker ps --filter "label=io.labsync.lab=$LAB" --format 'table {{.Names}}\t{{.Status}}\t{{.Label "io.labsync.kind"}}\t{{.Image}}'
echo
echo "    demo-01 logs like testflinger-agent:"
docker logs --tail 3 demo-01 2>&1 | sed 's/^/      /'

before=$(docker ps --no-trunc --filter "label=io.labsync.lab=$LAB" --format '{{.Names}} {{.ID}}' | sort)

step "Change one SUT: polling_interval of demo-02 from 5 to 7"
sed -i 's/^polling_interval: 5$/polling_interval: 7/' "$WORK/sut/demo-02.conf"
bin/labsync plan "$WORK"

step "labsync apply $WORK"
bin/labsync apply "$WORK" 2>>.demo/apply.log

after=$(docker ps --no-trunc --filter "label=io.labsync.lab=$LAB" --format '{{.Names}} {{.ID}}' | sort)
step "Containers whose ID changed (exactly demo-02 is expected)"
diff <(echo "$before") <(echo "$after") | awk '/^>/ {print "    " $2 " (new ID " substr($3, 1, 12) ")"}' || true

step "Apply again: nothing to do"
bin/labsync apply "$WORK" 2>>.demo/apply.log | tail -1

step "The daemon: labsync serve follows the lab as a git repository"
git -C "$WORK" init -q -b main && git -C "$WORK" add -A -f && git -C "$WORK" -c user.name=demo -c user.email=demo@lab.invalid commit -q -m "demo lab"
DATA=$(mktemp -d)
bin/labsync serve --repo "$PWD/$WORK" --data-dir "$DATA" --listen 127.0.0.1:18080 --mqtt-listen 127.0.0.1:18830 \
  --log-level warn >.demo/serve.log 2>&1 &
SERVE=$!
trap 'kill $SERVE 2>/dev/null; wait $SERVE 2>/dev/null; rm -rf "$DATA"' EXIT
for _ in $(seq 1 60); do curl -sf http://127.0.0.1:18080/readyz >/dev/null 2>&1 && break; sleep 0.5; done
for _ in $(seq 1 60); do curl -s http://127.0.0.1:18080/api/v1/status 2>/dev/null | grep -q '"last_result":"ok"' && break; sleep 0.5; done
echo "    GET /api/v1/status:"
curl -s http://127.0.0.1:18080/api/v1/status | sed 's/^/      /'
echo
echo "    retained on the embedded MQTT broker (127.0.0.1:18830), labsync/labsync-demo/#:"
go run ./testdata/mqttpeek tcp://127.0.0.1:18830 'labsync/labsync-demo/#' | sed 's/^/      /'
kill $SERVE 2>/dev/null || true
wait $SERVE 2>/dev/null || true
trap - EXIT
rm -rf "$DATA"

echo
echo "The demo lab keeps running. 'make demo-clean' removes all it created."
