#!/bin/bash
# The GPU measurements still open (issues 33-35), one device call each, run from the repo root on the
# device with the kit carried (bash benchmarks/device_kit.sh here first; the run tool's carry [".whl"]):
#   bash benchmarks/device_calls.sh A   issue 35: the z2 pair, then 32 x 1024 tokens: bf16 compiled,
#                                       Liger compiled, fp8 compiled, Liger eager
#   bash benchmarks/device_calls.sh B   issue 33: full fine-tune on ZeRO-2/3 (both sides), LoRA r=16 and
#                                       QLoRA on each
#   bash benchmarks/device_calls.sh C   issue 35: forkserver ranks and CUDA; start-up against the reference,
#                                       a compiled point from a cold and a warm cache; fp8 against bf16
#                                       compiled over 300 steps of text
#   bash benchmarks/device_calls.sh D   issue 34: the fake world's big-vocabulary and 7B suites
#   bash benchmarks/device_calls.sh E   issue 35: search=fastest (fp8 and perf=liger_mbs32 among its options)
#                                       against the grid bound: its first trial's time, its best TFLOP/s
#   bash benchmarks/device_calls.sh F   issue 35: fp8 against compiled bf16 on the loss, 300 steps of text,
#                                       two seeds each, the curves read back from MLflow
#   bash benchmarks/device_calls.sh G   issue 34: the GPT-2 large points not measured yet: ZeRO-3 as rank 0 of a
#                                       fake world of 8, and one GPU at 4096 tokens, micro batch 4 and checkpointing
#   bash benchmarks/device_calls.sh H   issue 35: fp8 against compiled bf16 on text the 1B cannot memorise in
#                                       300 steps (8 MB of Python's sources), seed 0 (SEEDS=1 on the warm machine:
#                                       the pair does not fit one call with cold compiles, 184 s and ~215 s);
#                                       SIDES=fp8 runs one side, OVERRIDES=... go to both (e.g.
#                                       precision.fp8_recipe=rowwise), RUN_S=<s> is one run's limit (260)
# Every run tracks to MLflow, as users run it; each table is rewritten as each row ends, under $OUT.
# A warm machine (a second call) built the DeepSpeed ops already: NOWARM=--no-warmup. A's pair of
# variants, presets and time limit: VARIANTS= (none, the pair measured already on this machine),
# PRESETS=a,b (e.g. z2+compile_mbs32,z2+fp8_mbs32,z2+fp8_rowwise_mbs32), LIMIT=<s>, RUN_S=<s> one run's
# limit (200; rowwise fp8 at micro batch 32 ran 170 s from a warm compile cache, over 200 s cold).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
AIO=$PWD/.whl/aio/usr
export PYTHONPATH=$PWD:/tmp/site:$PWD/.whl/bnb PATH=$PATH:/tmp/site/bin
export CPATH=$AIO/include LIBRARY_PATH=$AIO/lib/x86_64-linux-gnu LD_LIBRARY_PATH=$AIO/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export TORCH_CUDA_ARCH_LIST=9.0  # the image's 9.0a breaks DeepSpeed 0.19.8's op builder
REF=$PWD/.whl/reference/hand_written_trainer.py
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, transformers, deepspeed; print(torch.__version__, transformers.__version__, deepspeed.__version__)"
table=(python3 benchmarks/gpu_table.py --reference "$REF" --tracking on)  # a function would not run under timeout
case "${1:-}" in
A) timeout ${LIMIT:-400} "${table[@]}" --out "$OUT/a" --variants "${VARIANTS-z2}" ${NOWARM:-} --steps 20 --warm 4 --timeout ${RUN_S:-200} \
     --presets ${PRESETS:-z2+compile_mbs32,z2+liger_compile_mbs32,z2+fp8_mbs32,z2+liger_mbs32} ;;
B) timeout 540 "${table[@]}" --out "$OUT/b" --variants z2,z3 ${NOWARM:-} --steps 20 --warm 4 --timeout 150 \
     --presets z2+lora,z3+lora,z2+qlora,z3+qlora ;;
C) for m in forkserver spawn; do timeout 45 python3 benchmarks/forkserver_cuda.py $m; done
   timeout 240 python3 benchmarks/startup.py --reference "$REF" --out "$OUT/startup" --repeat 1
   timeout 250 "${table[@]}" --out "$OUT/text" --variants "" --no-warmup --steps 300 --warm 20 --timeout 190 \
     --presets z2+compile_text,z2+fp8_text ;;
E) python3 benchmarks/search_vs_grid.py --out "$OUT/search" --timeout ${LIMIT:-480} search.trials=12 launcher.gpu_mem_gib=80 ;;
F) timeout 560 python3 benchmarks/fp8_loss.py --out "$OUT/fp8_loss" --seeds 0,1 --steps 300 ;;
G) python3 benchmarks/fake_world_memory.py --out "$OUT/fake_world" --budget-s 450 \
     --point "model=gpt2_large world=8 zero=stage3 data.seq_len=2048 trainer.micro_batch_size=4" \
     --point "model=gpt2_large world=1 zero=stage2 data.seq_len=4096 trainer.micro_batch_size=1 trainer.gradient_checkpointing=true" \
     --point "model=gpt2_large world=1 zero=stage2 data.seq_len=4096 trainer.micro_batch_size=4 trainer.gradient_checkpointing=false,true" ;;
H) timeout 590 python3 benchmarks/fp8_loss.py --out "$OUT/fp8_stdlib" --seeds ${SEEDS:-0} --timeout ${RUN_S:-260} --steps 300 --corpus-mb 8 \
     ${SIDES:+--sides $SIDES} ${OVERRIDES:-} ;;
D) python3 benchmarks/fake_world_memory.py --out "$OUT/fake_world" --suite bigvocab --suite 7b --budget-s 500 ;;
*) echo "usage: bash benchmarks/device_calls.sh A|B|C|D|E|F|G|H" >&2; exit 2 ;;
esac
# Only 8 files come back from a call: each table and row file at the top of $OUT, named for its folder
# (fake_world/rows.jsonl -> fake_world_rows.jsonl), and everything else (logs, stores) in logs-<call>.tar.gz.
cd "$OUT" && find . -mindepth 2 -type f \( -name rows.jsonl -o -name runs.jsonl -o -name table.md \) |
  while read -r f; do cp "$f" "$(echo "${f#./}" | tr / _)"; done
dirs=$(find . -mindepth 1 -maxdepth 1 -type d)
[ -n "$dirs" ] && tar czf logs-$1.tar.gz --exclude='*/checkpoints' --exclude='*/corpus.txt' $dirs && rm -rf $dirs
ls -la "$OUT"
