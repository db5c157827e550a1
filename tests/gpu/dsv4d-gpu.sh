#!/usr/bin/env bash
# dsv4d-gpu.sh BIN TOKENIZER OUT - dsv4d on a GPU (run by device-check.sh).
#
# On the tiny preset, for 1 worker and for 2 workers sharing the GPU (their
# exchanges staged through host memory): start dsv4d with "device": "cuda"
# on loopback ports, answer one greedy gRPC request (dsv4ctl) whose tokens
# must equal `dsv4 generate --backend cuda`; SIGKILL one worker, wait until
# the server is ready again, and check that every rank mapped its device
# weights from the descriptor the supervisor kept (the log says "device
# weights mapped"; "uploaded" means the allocation did not survive its
# worker) and that the same request gives the same tokens; then SIGTERM
# (drain, exit 0).  Prints one line per case to stdout:
#   dsv4d-cuda-<N>w <ok|FAILED> <what>
# Exit status 0 when every case passed.  DSV4D_GPU_DEVICE=devsim runs the same
# steps on the CPU (how the script itself is checked on a machine without a GPU).
set -u
DEV=${DSV4D_GPU_DEVICE:-cuda}
BIN=$1
TOK=$2
OUT=$3
tmp=$(mktemp -d "${TMPDIR:-/tmp}/dsv4d-gpu.XXXXXX")
trap 'pkill -KILL -f "$tmp/" 2>/dev/null; rm -rf "$tmp"' EXIT
model=$tmp/tiny
IDS=0,15,27,99,1000,4242
NTOK=16

ids_of() { # the token ids of a dsv4 / dsv4ctl JSON answer, comma-separated
    sed -n 's/.*"\(tokens\|token_ids\)": *\[\([^]]*\)\].*/\2/p' | head -n 1 | tr -d ' '
}

if ! "$BIN/dsv4" mkmodel --preset tiny --format nvfp4 --tokenizer "$TOK" --out "$model" \
    >"$OUT/dsv4d-gpu.log" 2>&1; then
    echo "dsv4d-$DEV mkmodel FAILED (see dsv4d-gpu.log)"
    exit 1
fi
want=$("$BIN/dsv4" generate --model "$model" --prompt-ids "$IDS" --max-tokens $NTOK --mtp 1 \
    --no-stop --backend "$DEV" --json 2>>"$OUT/dsv4d-gpu.log" | ids_of)
cpu=$("$BIN/dsv4" generate --model "$model" --prompt-ids "$IDS" --max-tokens $NTOK --mtp 1 \
    --no-stop --backend cpu --json 2>>"$OUT/dsv4d-gpu.log" | ids_of)
fail=0

ask() { # $1 port: the greedy tokens over gRPC
    "$BIN/dsv4ctl" --target "127.0.0.1:$1" --timeout 60 --json generate --ids "$IDS" \
        --max-tokens $NTOK --temperature 0 --ignore-eos 2>>"$OUT/dsv4d-gpu.log" | ids_of
}

since() { # seconds since $1 (date +%s.%N), one decimal
    awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'
}

wait_ready() { # $1 port, $2 pid, $3 seconds
    local i=0
    until "$BIN/dsv4ctl" --target "127.0.0.1:$1" --timeout 2 health >/dev/null 2>&1; do
        i=$((i + 1))
        if [ $i -gt $(($3 * 5)) ] || ! kill -0 "$2" 2>/dev/null; then
            return 1
        fi
        sleep 0.2
    done
}

for n in 1 2; do
    case_name="dsv4d-$DEV-${n}w"
    run=$tmp/run$n
    mkdir -p "$run"
    gport=$((52050 + n))
    hport=$((58050 + n))
    cat >"$run/dsv4d.json" <<JSON
{
  "model": "$model",
  "workers": $n,
  "device": "$DEV",
  "mtp": 1,
  "max_model_len": 1024,
  "runtime_dir": "$run",
  "grpc_listen": "127.0.0.1:$gport",
  "http_listen": "127.0.0.1:$hport",
  "log_level": "info"
}
JSON
    t0=$(date +%s.%N)
    "$BIN/dsv4d" --config "$run/dsv4d.json" 2>"$run/dsv4d.log" &
    pid=$!
    if ! wait_ready $gport $pid 120; then
        echo "$case_name FAILED not ready (log: dsv4d-gpu.log)"
        cat "$run/dsv4d.log" >>"$OUT/dsv4d-gpu.log"
        kill -KILL $pid 2>/dev/null
        fail=1
        continue
    fi
    ready_s=$(since "$t0")
    first=$(ask $gport)
    worker=$(pgrep -P $pid | head -n 1)
    t1=$(date +%s.%N)
    [ -n "$worker" ] && kill -KILL "$worker"
    sleep 0.5
    ok=1
    wait_ready $gport $pid 60 || ok=0
    back_s=$(since "$t1")
    second=$(ask $gport)
    # the supervisor's lines: "rank R loaded in S s from ..., device weights mapped|uploaded"
    mapped=$(grep -c "rank [0-9]* loaded in .*device weights mapped" "$run/dsv4d.log")
    uploaded=$(grep -c "rank [0-9]* loaded in .*device weights uploaded" "$run/dsv4d.log")
    kill -TERM $pid
    rc=0
    wait $pid || rc=$?
    {
        echo "==== $case_name"
        cat "$run/dsv4d.log"
    } >>"$OUT/dsv4d-gpu.log"
    what="ready ${ready_s}s; tokens $([ "$first" = "$want" ] && echo "= generate --backend $DEV" || echo "!= generate --backend $DEV ($first vs $want)")"
    what="$what ($([ "$first" = "$cpu" ] && echo "= cpu" || echo "!= cpu"))"
    what="$what; after a worker SIGKILL: ready again in ${back_s}s, $mapped rank loads mapped / $uploaded uploaded device weights, tokens $([ "$second" = "$first" ] && echo same || echo DIFFERENT); exit $rc"
    if [ -n "$first" ] && [ "$first" = "$want" ] && [ "$second" = "$first" ] && [ $ok -eq 1 ] &&
        [ $rc -eq 0 ]; then
        echo "$case_name ok $what"
    else
        echo "$case_name FAILED $what"
        fail=1
    fi
done
exit $fail
