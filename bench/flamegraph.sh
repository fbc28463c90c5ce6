#!/usr/bin/env bash
# Write a CPU flamegraph of a running hub (or any process), like ws2api's -cpuprofile:
#   bench/flamegraph.sh PID [SECONDS] [OUT.svg]
# Samples every thread of PID with `perf record` (software clock, call graphs from DWARF
# unwinding, which the release profile's debug info makes possible) for SECONDS (default 20),
# then folds the stacks with inferno into an SVG (default flamegraph-PID.svg).
# Installs what it needs: Debian's linux-perf, and inferno from crates.io into bench/.tools.
set -euo pipefail
pid=${1:?usage: bench/flamegraph.sh PID [SECONDS] [OUT.svg]}
secs=${2:-20}
out=${3:-flamegraph-$pid.svg}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="$here/.tools"

if ! command -v perf >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
fi
if [[ ! -x "$tools/bin/inferno-flamegraph" ]]; then
    cargo install inferno --locked --root "$tools"
fi

data="$(mktemp /tmp/flamegraph-XXXXXX.data)"
trap 'rm -f "$data"' EXIT
# cpu-clock works where hardware counters are not exposed (VMs, containers).
perf record -e cpu-clock -F 999 --call-graph dwarf,16384 -p "$pid" -o "$data" -- sleep "$secs"
perf script -i "$data" 2>/dev/null \
    | "$tools/bin/inferno-collapse-perf" \
    | "$tools/bin/inferno-flamegraph" --title "switchboard pid $pid, ${secs}s" > "$out"
echo "wrote $out"
