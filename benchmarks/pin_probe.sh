# Does pinning a host-bound one-GPU ZeRO-3 run to fixed cores steady its step time? (device only)
# The reference's z3 (1B, 50 steps), free and pinned to the first 8 cores alternating, each output
# line time-stamped (per-step times from the 'loss' lines), nvidia-smi clocks sampled every 250 ms.
# usage: bash benchmarks/pin_probe.sh OUT_DIR REFERENCE   (results: benchmarks/RESULTS.md, 13th session)
set -u
O=$1 REF=$2
lscpu > $O/lscpu.txt; lscpu -p=CPU,CORE,SOCKET,NODE > $O/lscpu_p.txt
nvidia-smi -q -d CLOCK,PERFORMANCE,POWER > $O/smi_q.txt 2>&1
PIN=$(grep -v '^#' $O/lscpu_p.txt | awk -F, '$4==0 && !seen[$2]++ {print $1}' | head -8 | paste -sd,)
echo "pin set: $PIN" | tee $O/pin.txt
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,utilization.gpu,temperature.gpu,clocks_event_reasons.active --format=csv -lms 250 > $O/smi.csv 2>&1 &
SMI=$!
stamp() { python3 -u -c "import sys,time;t=time.time();[sys.stdout.write(f'{time.time()-t:8.2f} {time.time():.2f} {l}') for l in sys.stdin]"; }
export BENCH_SIZE=1b OMP_NUM_THREADS=8
BENCH_STEPS=4 BENCH_WARM=1 torchrun --nproc_per_node 1 $REF z3 /tmp/pp/warm 2>&1 | stamp > $O/warm.log
for i in 1 2 3; do
  for mode in free pinned; do
    pre=""; [ $mode = pinned ] && pre="taskset -c $PIN"
    BENCH_STEPS=50 BENCH_WARM=8 $pre torchrun --nproc_per_node 1 $REF z3 /tmp/pp/$mode$i 2>&1 | stamp > $O/${mode}_$i.log
    echo "$mode $i $(grep RESULT $O/${mode}_$i.log | tail -1 | cut -c1-140)"
  done
done
kill $SMI
