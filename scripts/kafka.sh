#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft) on loopback, shared by the demo, the tests and CI.
#   scripts/kafka.sh start   fetch jars (cached), format storage, start, wait until ready
#   scripts/kafka.sh stop    stop the broker started by `start`
#   scripts/kafka.sh resume  start it again on the state it left (topics, offsets), for restart tests
#   scripts/kafka.sh env     print BRONZE_KAFKA_BOOTSTRAP=... for the running broker
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
source "$here/scripts/env.sh"; cache="$BRONZE_CACHE"
jars="$cache/kafka-jars"
state="${BRONZE_KAFKA_STATE:-$cache/kafka-run}"
port="${BRONZE_KAFKA_PORT:-39092}"
cport="${BRONZE_KAFKA_CONTROLLER_PORT:-39093}"
pidfile="$state/kafka.pid"

fetch_jars() {
  local pom="$here/docker/kafka/pom.xml"
  local stamp="$jars/.pom.sha256"
  local want
  want="$(sha256sum "$pom" | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return 0; fi
  echo "kafka.sh: fetching broker jars into $jars" >&2
  rm -rf "$jars"; mkdir -p "$jars"
  mvn -q -B -f "$pom" \
    org.apache.maven.plugins:maven-dependency-plugin:3.11.0:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$jars" >&2
  echo "$want" > "$stamp"
}

is_up() {
  # The broker answers on its port once the listener is bound; metadata readiness is checked below.
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

start() {
  fetch_jars
  if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "kafka.sh: broker already running (pid $(cat "$pidfile"))" >&2; return 0
  fi
  rm -rf "$state"; mkdir -p "$state/data"
  cat > "$state/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$state/data
num.partitions=3
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
message.max.bytes=10485760
log.retention.hours=-1
PROPS
  # Cluster ids are base64 and may start with `-`, so pass them as --cluster-id=ID.
  local cluster_id
  cluster_id="$(java -cp "$jars/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)"
  java -cp "$jars/*" kafka.tools.StorageTool format --cluster-id="$cluster_id" \
    -c "$state/server.properties" >"$state/format.log" 2>&1 \
    || { cat "$state/format.log" >&2; exit 1; }
  launch
}

resume() {
  if [[ ! -f "$state/server.properties" ]]; then
    echo "kafka.sh: no broker state in $state to resume" >&2; exit 1
  fi
  if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "kafka.sh: broker already running (pid $(cat "$pidfile"))" >&2; return 0
  fi
  launch
}

launch() {
  nohup java -Xms256m -Xmx512m -Dorg.slf4j.simpleLogger.defaultLogLevel=warn -cp "$jars/*" kafka.Kafka "$state/server.properties" \
    >>"$state/kafka.log" 2>&1 &
  echo $! > "$pidfile"
  for _ in $(seq 1 120); do
    if is_up; then echo "kafka.sh: broker ready on 127.0.0.1:$port" >&2; return 0; fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "kafka.sh: broker exited, log follows" >&2; tail -50 "$state/kafka.log" >&2; exit 1
    fi
    sleep 0.5
  done
  echo "kafka.sh: broker not ready after 60 s" >&2; tail -50 "$state/kafka.log" >&2; exit 1
}

stop() {
  if [[ -f "$pidfile" ]]; then
    local pid; pid="$(cat "$pidfile")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  resume) fetch_jars; resume ;;
  fetch) fetch_jars ;;
  env) echo "BRONZE_KAFKA_BOOTSTRAP=127.0.0.1:$port" ;;
  *) echo "usage: $0 start|stop|resume|fetch|env" >&2; exit 64 ;;
esac
