#!/bin/sh
# How sample_traces/stacks_* were recorded (as root, on the kvm_pvm reference host, Linux
# 6.18.44, trace-cmd 3.1.6): the kvm preset's events with options/stacktrace and
# options/userstacktrace, the tracefs `trace` file saved as text, then the same ring buffer
# saved as a trace.dat by `trace-cmd extract` (which resets the events afterwards; the options
# changed here are put back at the end). The excerpts were then cut with
#   sed -n 141362,142857p trace.txt > stacks_teardown.txt   (20448.6333 s .. 20448.6345 s)
#   sed -n 83736,83875p trace.txt > stacks_interleaved.txt
#   trace-cmd split -i stacks.dat -o stacks_teardown.dat 20448.6333 20448.6345
#   trace-cmd report -i stacks_teardown.dat > stacks_teardown.report.txt
# Usage: sudo sample_traces/record_stacks.sh OUTDIR  (builds and runs workloads/tinyvmm)
set -eu
O=${1:?usage: record_stacks.sh OUTDIR}
T=/sys/kernel/tracing
[ -d $T/events ] || mount -t tracefs nodev $T
cd "$(dirname "$0")"
make -s -C workloads
mkdir -p "$O"
old_kb=$(cat $T/buffer_size_kb | sed 's/ .*//')
old_clock=$(sed 's/.*\[\(.*\)\].*/\1/' $T/trace_clock)
old_tgid=$(cat $T/options/record-tgid)
restore() {
    echo 0 > $T/options/stacktrace
    echo 0 > $T/options/userstacktrace
    echo "$old_tgid" > $T/options/record-tgid
    echo "$old_clock" > $T/trace_clock
    echo 0 > $T/events/enable
    echo "$old_kb" > $T/buffer_size_kb
}
trap restore EXIT
echo 0 > $T/tracing_on
echo 16384 > $T/buffer_size_kb
echo mono > $T/trace_clock
echo 1 > $T/options/record-tgid
for e in kvmmmu kvm/kvm_entry kvm/kvm_exit kvm/kvm_page_fault kvm/kvm_userspace_exit \
         kvm/kvm_unmap_hva_range; do
    echo 1 > $T/events/$e/enable
done
echo 1 > $T/options/stacktrace
echo 1 > $T/options/userstacktrace
echo > $T/trace
echo 1 > $T/tracing_on
workloads/tinyvmm -v 3 -c 1 -p 2 > "$O/workload.log" 2>&1 || echo "workload exit status $?"
echo 0 > $T/tracing_on
cat $T/trace > "$O/trace.txt"
cat $T/per_cpu/cpu*/stats > "$O/stats.txt"
trace-cmd extract -o "$O/stacks.dat"
echo 1 > $T/tracing_on
