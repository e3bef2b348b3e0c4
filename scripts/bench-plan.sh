#!/usr/bin/env bash
# Times a no-op `labsync plan` against a host that runs every agent of a lab
# of N SUTs (default 500), and counts the Docker API calls it makes.
# Starts N stand-in agents (about 10 MiB each), then removes them.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-500}
RUNS=${RUNS:-5}
LAB=labsync-bench-$$
WORK=$(mktemp -d)
cleanup() {
  ids=$(docker ps -aq --filter "label=io.labsync.lab=$LAB")
  [ -n "$ids" ] && docker rm -f $ids >/dev/null
  nets=$(docker network ls -q --filter "label=io.labsync.lab=$LAB")
  [ -n "$nets" ] && docker network rm $nets >/dev/null
  docker rmi -f "labsync-bench-standin:$$" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

go build -trimpath -o bin/labsync ./cmd/labsync
mkdir -p "$WORK/img" "$WORK/lab/sut"
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$WORK/img/standin" ./testdata/standin
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$WORK/img/labsync-agent" ./cmd/labsync-agent
cp testdata/standin/Dockerfile "$WORK/img/"
docker build -q -t labsync-bench-standin:$$ "$WORK/img" >/dev/null 2>&1
cat > "$WORK/lab/lab.yaml" <<YAML
name: $LAB
container_prefix: $LAB-
agents:
  image: {name: "labsync-bench-standin:$$"}
  command: [testflinger-agent, -c, "{conf}"]
  healthcheck: {disable: true}
  memory: 32m
  update: {parallelism: 16, min_uptime: 100ms}
YAML
for i in $(seq 1 "$N"); do
  printf 'agent_id: dut%04d\nserver_address: http://tf:8000\njob_queues: [dut%04d]\npolling_interval: 3600\n' "$i" "$i" > "$WORK/lab/sut/dut$(printf %04d "$i").conf"
done
echo "Starting $N agents..."
start=$(date +%s.%N)
bin/labsync apply --log-level warn "$WORK/lab" | tail -1
echo "apply of $N agents took $(echo "$(date +%s.%N) - $start" | bc) s"

printf '\n%-6s %-10s %-s\n' run seconds "docker API calls"
for r in $(seq 1 "$RUNS"); do
  s=$(date +%s.%N)
  out=$(bin/labsync plan --log-level debug "$WORK/lab" 2>&1)
  e=$(date +%s.%N)
  echo "$out" | grep -q "No changes" || { echo "plan is not empty"; echo "$out" | tail; exit 1; }
  calls=$(echo "$out" | sed -n 's/.*msg="docker api calls" reads=\([0-9]*\) writes=\([0-9]*\).*/\1 reads, \2 writes/p')
  printf '%-6s %-10.3f %s\n' "$r" "$(echo "$e - $s" | bc)" "$calls"
done
