#!/bin/sh
# Regenerate the recorded sample traces with the project's own tools:
# builds sample_traces/workloads/tinyvmm, records it with `kvm-mmu-replay record`, and checks
# that every file reads back (`kvm-mmu-replay info`).
#
# Needs root, /dev/kvm, tracefs with kvm events, and trace-cmd (Debian package trace-cmd) for
# the trace.dat. Usage (from anywhere): sudo sample_traces/regenerate.sh
# KMR overrides the CLI (default: the checkout's .venv/bin/kvm-mmu-replay).
set -eu
cd "$(dirname "$0")/.."
KMR=${KMR:-.venv/bin/kvm-mmu-replay}
S=sample_traces
W=$S/workloads/tinyvmm
make -s -C $S/workloads

# 1. trace_pipe text, kvm + sched + workqueue events, CLOCK_MONOTONIC timestamps (so the
#    workload log's times line up); 3 VMs x 2 vCPUs (+1 hot-added); gzip -n: no name/time.
$KMR record -o $S/recorded_kvm_full.txt --events kvm-full --clock mono --json --force \
    -- sh -c 'exec "$0" "$@" > sample_traces/recorded_kvm_full.workload.log' \
    $W -v 3 -c 2 -p 8 > $S/recorded_kvm_full.record.json
gzip -n -9 -f $S/recorded_kvm_full.txt

# 2. trace.dat through trace-cmd extract, kvm events only; 2 VMs x 1 vCPU.
$KMR record -o $S/recorded_kvm.dat --trace-cmd --events kvm --clock mono --json --force \
    -- sh -c 'exec "$0" "$@" > sample_traces/recorded_kvm.workload.log' \
    $W -v 2 -c 1 -p 4 > $S/recorded_kvm.record.json

for f in $S/recorded_kvm_full.txt.gz $S/recorded_kvm.dat; do
    $KMR info "$f"
    size=$(wc -c < "$f")
    if [ "$size" -gt 1572864 ]; then
        echo "error: $f is $size bytes (> 1.5 MiB); shrink the workload options" >&2
        exit 1
    fi
done
