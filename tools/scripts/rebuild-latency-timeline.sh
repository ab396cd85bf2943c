#!/bin/bash
# The client's p99 over time, in 10 s buckets, while a node is marked out and two volumes are
# rebuilt, with when each is whole again: tells apart the latency a volume's own resync adds
# from what another volume's rebuild adds. Needs a release build of fabricd and fabricctl, fio.
#
#   tools/scripts/rebuild-latency-timeline.sh [CLIENT_IOPS] [BENCH_SIZE]
set -euo pipefail
iops=${1:-2000}
bench=${2:-2G}
bin=target/release
dir=$(mktemp -d "${TMPDIR:-/tmp}/fabric-timeline.XXXXXX")
port=10998
"$bin/fabricd" dev --nodes 5 --data-dir "$dir/fabric" --nbd-listen "127.0.0.1:$port" \
    --volume "bench:${bench}iB" --volume client:256MiB >/dev/null 2>&1 &
cluster=$!
trap 'kill $cluster 2>/dev/null; wait $cluster 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 60); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 1; done
uri() { echo "nbd://127.0.0.1:$port/$1"; }
fio --name=fill --ioengine=nbd --uri="$(uri bench)" --rw=write --bs=1M --size="$bench" --iodepth=8 >/dev/null
fio --name=fill --ioengine=nbd --uri="$(uri client)" --rw=write --bs=1M --size=256M --iodepth=8 >/dev/null
degraded() {
    "$bin/fabricctl" --json --data-dir "$dir/fabric" volume show "$1" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["replica_state"]["pgs_degraded"])'
}
fio --name=client --ioengine=nbd --uri="$(uri client)" --rw=randrw --rwmixread=50 --bs=4k \
    --iodepth=8 --size=256M --runtime=3600 --time_based=1 --randrepeat=0 --norandommap=1 \
    --rate_iops=$((iops / 2)) --write_lat_log="$dir/lat" --log_avg_msec=0 >/dev/null 2>&1 &
client=$!
start=$(date +%s.%N)
since() { echo "$(date +%s.%N) - $start" | bc; }
sleep 20
echo "node 2 out at $(since) s"
"$bin/fabricctl" --data-dir "$dir/fabric" node out 2 >/dev/null
client_whole="" bench_whole=""
while [ -z "$client_whole" ] || [ -z "$bench_whole" ]; do
    if [ -z "$client_whole" ] && [ "$(degraded client)" = 0 ]; then
        client_whole=$(since); echo "client whole at $client_whole s"
    fi
    if [ -z "$bench_whole" ] && [ "$(degraded bench)" = 0 ]; then
        bench_whole=$(since); echo "bench whole at $bench_whole s"
    fi
    sleep 1
done
sleep 20
kill -INT $client
wait $client || true
python3 - "$dir/lat_clat.1.log" <<'PY'
import collections, sys
buckets = collections.defaultdict(lambda: ([], []))
for line in open(sys.argv[1]):
    ms, ns, direction = (int(x) for x in line.split(",")[:3])
    buckets[ms // 10_000][direction].append(ns / 1000)
def p99(v):
    return sorted(v)[int(len(v) * 0.99)] if v else 0
for k in sorted(buckets):
    reads, writes = buckets[k]
    print(f"{k * 10:4d}-{k * 10 + 10:4d} s  IOs {len(reads) + len(writes):6d}  "
          f"p99 read {p99(reads):6.0f} µs  write {p99(writes):6.0f} µs")
PY
