# Device run of benchmarks/probes/prefill_probe.py with ncu pipe counts (copy the script to
# .prefill_probe/probe.py and its git revision to .prefill_probe/rev, carry both).
set -x
export QSATTN_GIT_REVISION=$(cat .prefill_probe/rev) PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.limit --format=csv
timeout 330 python3 .prefill_probe/probe.py all 2>&1 | tee $OUT/probe_log.txt
M=$(ncu --query-metrics 2>/dev/null | awk '/^sm__inst_executed_pipe_[a-z0-9_]+ /{print $1".sum"}' | sort -u | tr '\n' , )
echo "metrics: $M"
timeout 150 ncu --kernel-name regex:attn_fwd --metrics "${M}smsp__inst_executed.sum,sm__cycles_elapsed.max" --csv python3 .prefill_probe/probe.py ncu > $OUT/ncu.csv 2> $OUT/ncu_err.txt
tail -5 $OUT/ncu_err.txt; wc -l $OUT/ncu.csv
