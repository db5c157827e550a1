# tiny-daemon.sh: sourced by setup-and-run and bench-serve (from the
# repository root, after the build).  Writes the tiny checkpoint when it is
# missing and starts dsv4d on it with 2 CPU workers; stop_tiny_daemon drains
# it with SIGTERM and fails unless it exits 0.
#   DSV4_GRPC_PORT (50051), DSV4_HTTP_PORT (8000): loopback ports.
#   DSV4_THREADS_PER_WORKER (1): CPU threads of each worker.
#   DSV4_PRESET (tiny): the checkpoint, tiny or small (written to PRESET-model/).
#   DSV4_MTP (-1): dsv4d's mtp key (-1: the checkpoint's MTP head, 0: off).
grpc_port=${DSV4_GRPC_PORT:-50051}
http_port=${DSV4_HTTP_PORT:-8000}

preset=${DSV4_PRESET:-tiny}
case $preset in
tiny | small) ;;
*)
    echo "DSV4_PRESET: tiny or small, not '$preset'" >&2
    exit 2
    ;;
esac

make_tiny_model() {
    if [ ! -f "$preset-model/config.json" ]; then
        ./dsv4 mkmodel --preset "$preset" --format nvfp4 \
            --tokenizer ../shared/data/tokenizer/deepseek-v3-tokenizer.json --out "$preset-model"
    fi
}

start_tiny_daemon() {
    make_tiny_model
    run=$(mktemp -d "${TMPDIR:-/tmp}/dsv4d-run.XXXXXX")
    cat >"$run/dsv4d.json" <<JSON
{
  "model": "$(pwd)/$preset-model",
  "served_model_name": "$preset",
  "workers": 2,
  "threads_per_worker": ${DSV4_THREADS_PER_WORKER:-1},
  "mtp": ${DSV4_MTP:--1},
  "max_model_len": 4096,
  "runtime_dir": "$run",
  "grpc_listen": "127.0.0.1:$grpc_port",
  "http_listen": "127.0.0.1:$http_port",
  "log_level": "info"
}
JSON
    ./dsv4d --check-config --config "$run/dsv4d.json" >/dev/null
    ./dsv4d --config "$run/dsv4d.json" 2>"$run/dsv4d.log" &
    pid=$!
    trap 'kill "$pid" 2>/dev/null || true; rm -rf "$run"' EXIT INT TERM
    echo "dsv4d (pid $pid): waiting until ready (gRPC 127.0.0.1:$grpc_port, HTTP 127.0.0.1:$http_port)"
    i=0
    until ./dsv4ctl --target "127.0.0.1:$grpc_port" health >/dev/null 2>&1; do
        i=$((i + 1))
        if [ $i -gt 600 ] || ! kill -0 "$pid" 2>/dev/null; then
            echo "dsv4d did not become ready; its log:" >&2
            cat "$run/dsv4d.log" >&2
            exit 1
        fi
        sleep 0.2
    done
}

stop_tiny_daemon() {
    echo "== stopping dsv4d (SIGTERM: drain, then exit)"
    kill -TERM "$pid"
    rc=0
    wait "$pid" || rc=$?
    trap - EXIT INT TERM
    tail -n 3 "$run/dsv4d.log"
    rm -rf "$run"
    if [ $rc -ne 0 ]; then
        echo "dsv4d exited $rc" >&2
        exit 1
    fi
    echo "dsv4d stopped cleanly"
}
