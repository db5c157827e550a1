#!/usr/bin/env bash
# device-check.sh - the one script to run on a GPU machine (the device tool's
# `run`; see the device README: one call, results under $OUT, nothing from
# the network, well under 5 minutes).  From the repository root:
#
#   tests/gpu/device-check.sh            on the GPU machine: programs from the
#                                        carried bundle build-devcheck/ when they run
#                                        there, else built for the local GPU's
#                                        architecture; then every CUDA test, the
#                                        tiny model end to end on the GPU vs the
#                                        CPU backend, whether shared device weights
#                                        outlive their worker (test_vmm_survive),
#                                        dsv4d with 1 GPU worker and with 2 sharing
#                                        the GPU answering gRPC before and after a
#                                        worker is killed (dsv4d-gpu.sh), the
#                                        kernel benchmarks and decode of the
#                                        `small` preset (tok/s at batch 1, 8, 64,
#                                        MTP off and on); a short table last, also
#                                        in $OUT/summary.txt
#   tests/gpu/device-check.sh --pack     here (no GPU needed): build the bundle
#                                        build-devcheck/ (sm_90a programs, stripped,
#                                        and the shared libraries beyond the
#                                        C/C++ runtime they link; git ignores it)
#   tests/gpu/device-check.sh --dry-run  everything that needs no GPU: programs
#                                        (bundle or build), the host tests, the
#                                        GPU tests and the benchmark (which skip
#                                        with 77), the table
#
# A run call: run(command="tests/gpu/device-check.sh", carry=["build-devcheck"],
# timeout_s=420) after --pack here (the tool sends the session's own checkout:
# the script and the bundle must be in it); without the bundle the script builds on the
# GPU machine (needs autoconf or a carried ./configure, and the -dev packages
# configure asks for).  Results ($OUT, default /tmp/device-check-out): summary.txt, tests.log,
# test-logs.txt, dsv4d-gpu.txt, dsv4d-gpu.log, bench.log, bench.json, build.log.  Exit status: 0 when every test passed
# (or, in --dry-run, skipped for want of a device), 1 otherwise.
set -u
set -o pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MODE=run
case "${1:-}" in
--pack) MODE=pack ;;
--dry-run) MODE=dry ;;
"") ;;
-h | --help)
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 0
    ;;
*)
    echo "usage: $0 [--pack | --dry-run | --help]" >&2
    exit 2
    ;;
esac
OUT=${OUT:-${TMPDIR:-/tmp}/device-check-out}
mkdir -p "$OUT"
BUNDLE=$ROOT/build-devcheck # ignored by git (/build-*/): travels when carried
TESTS="tests/cuda/test_cuda_math tests/cuda/test_cuda_plan tests/cuda/test_cuda_nodev \
tests/cuda/test_cuda_ops tests/cuda/test_cuda_forward tests/cuda/test_comm_nccl \
tests/cuda/test_vmm_survive"
PROGRAMS="$TESTS tests/cuda/bench_cuda dsv4 dsv4d dsv4ctl"
# the tokenizer the tiny checkpoint takes its vocabulary from (travels in the bundle)
TOKENIZER_SRC=$ROOT/../shared/data/tokenizer/deepseek-v3-tokenizer.json
JOBS=$(nproc 2>/dev/null || echo 4)
T0=$(date +%s)

log() {
    echo "device-check: $*" >&2
}

elapsed() {
    echo $(($(date +%s) - T0))
}

# ---------------------------------------------------------------- the GPU

GPU="none"
ARCH="sm_90a"
if command -v nvidia-smi >/dev/null 2>&1 &&
    q=$(nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader 2>/dev/null | head -n 1) &&
    [ -n "$q" ]; then
    GPU=$q
    cc=$(echo "$q" | awk -F', ' '{print $2}' | tr -d '.')
    case "$cc" in
    90) ARCH=sm_90a ;;
    100) ARCH=sm_100a ;;
    103) ARCH=sm_103a ;;
    [0-9]*) ARCH=sm_$cc ;;
    esac
fi
log "GPU: $GPU; kernels for $ARCH; mode $MODE"
if [ "$MODE" = run ] && [ "$GPU" = none ]; then
    log "no GPU found (nvidia-smi); use --dry-run on a machine without one"
    exit 1
fi

# ---------------------------------------------------------------- building

# Configures and builds the programs into $1 for architectures $2.
build() {
    local dir=$1 arch=$2
    if [ ! -x "$ROOT/configure" ]; then
        if ! command -v autoreconf >/dev/null 2>&1; then
            log "no ./configure and no autoreconf: carry configure, Makefile.in, aclocal.m4, build-aux, dsv4-build.h.in (or use --pack)"
            return 1
        fi
        (cd "$ROOT" && autoreconf -fi) >>"$OUT/build.log" 2>&1 || return 1
    fi
    mkdir -p "$dir"
    if [ ! -f "$dir/Makefile" ] || ! grep -q "with-cuda-arch=$arch" "$dir/config.log" 2>/dev/null; then
        (cd "$dir" && "$ROOT/configure" --with-cuda "--with-cuda-arch=$arch") >>"$OUT/build.log" 2>&1 ||
            {
                log "configure failed (see $OUT/build.log)"
                return 1
            }
    fi
    # shellcheck disable=SC2086 # word splitting of the program list is intended
    (cd "$dir" && make -j"$JOBS" $PROGRAMS) >>"$OUT/build.log" 2>&1 ||
        {
            log "build failed (see $OUT/build.log)"
            return 1
        }
}

if [ "$MODE" = pack ]; then
    dir=$ROOT/build-pack
    : >"$OUT/build.log"
    build "$dir" sm_90a || exit 1
    rm -rf "$BUNDLE"
    mkdir -p "$BUNDLE/build/tests/cuda" "$BUNDLE/lib"
    for p in $PROGRAMS; do
        strip -o "$BUNDLE/build/$p" "$dir/$p" || exit 1
        # libraries beyond glibc, libstdc++/libgcc and the driver's libcuda travel along
        ldd "$dir/$p" | awk '$3 ~ /^\// {print $3}' | while read -r lib; do
            case "$(basename "$lib")" in
            libc.so* | libm.so* | libdl.so* | librt.so* | libpthread.so* | ld-linux* | libgcc_s.so* | libstdc++.so* | libcuda.so*) ;;
            libnccl.so*) ;; # 200+ MB: too big to travel; found on the GPU machine (nccl_path)
            *) cp -Lu "$lib" "$BUNDLE/lib/" ;;
            esac
        done
    done
    cp "$TOKENIZER_SRC" "$BUNDLE/tokenizer.json" || exit 1
    echo "sm_90a $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" >"$BUNDLE/manifest"
    log "bundle in $BUNDLE ($(du -sh "$BUNDLE" | cut -f1)); carry it: carry=[\"build-devcheck\"]"
    exit 0
fi

# A directory holding libnccl.so.2 on this machine (the CUDA toolkit's, the system's, or
# the nvidia-nccl wheel of the image's Python), printed when found.
nccl_path() {
    local d
    for d in /usr/local/cuda/lib64 /usr/lib/x86_64-linux-gnu /usr/local/lib; do
        [ -e "$d/libnccl.so.2" ] && echo "$d" && return 0
    done
    d=$(python3 -c 'import os, nvidia.nccl as n; print(os.path.join(list(n.__path__)[0], "lib"))' \
        2>/dev/null) && [ -e "$d/libnccl.so.2" ] && echo "$d" && return 0
    return 1
}

# Programs: the bundle when it runs here, else a local build.
SOURCE=none
BIN=""
if [ -f "$BUNDLE/manifest" ]; then
    export LD_LIBRARY_PATH="$BUNDLE/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    if nd=$(nccl_path); then
        LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$nd"
    else
        log "no libnccl.so.2 found: test_comm_nccl cannot start"
    fi
    if "$BUNDLE/build/tests/cuda/test_cuda_nodev" >>"$OUT/build.log" 2>&1; then
        SOURCE="bundle ($(cat "$BUNDLE/manifest"))"
        BIN=$BUNDLE/build
    else
        log "the carried bundle does not run here (see $OUT/build.log); building"
    fi
fi
if [ -z "$BIN" ]; then
    if build "$ROOT/build-gpu" "$ARCH"; then
        SOURCE="built here for $ARCH"
        BIN=$ROOT/build-gpu
    fi
fi
log "programs: $SOURCE ($(elapsed)s)"

# ---------------------------------------------------------------- tests

declare -A RES
fail=0
if [ -n "$BIN" ]; then
    # shellcheck disable=SC2086 # word splitting of the test list is intended
    DSV4_SRCDIR=$ROOT DSV4_BUILDDIR=$BIN DSV4_TEST_TIMEOUT=120 \
        timeout 200 sh "$ROOT/scripts/run-tests" $TESTS 2>&1 | tee "$OUT/tests.log" >&2
    for t in $TESTS; do
        line=$(grep -E "^(PASS|FAIL|SKIP): $t " "$OUT/tests.log" | head -n 1)
        RES[$t]="NOT RUN"
        [ -n "$line" ] && RES[$t]="${line%%:*} ${line#*"$t" }"
        case "$line" in
        PASS*) ;;
        SKIP*) [ "$MODE" = dry ] || fail=1 ;;
        *) fail=1 ;;
        esac
    done
    for f in "$BIN"/tests/logs/tests_cuda_*.log; do
        [ -f "$f" ] && {
            echo "==== $(basename "$f")"
            cat "$f"
        }
    done >"$OUT/test-logs.txt" 2>/dev/null
else
    fail=1
fi

# ---------------------------------------------------------------- dsv4d on the GPU

DAEMON_RC=skipped
TOK=$BUNDLE/tokenizer.json
[ -f "$TOK" ] || TOK=$TOKENIZER_SRC
if [ -n "$BIN" ] && [ "$MODE" = run ]; then
    if [ -f "$TOK" ]; then
        timeout 300 bash "$ROOT/tests/gpu/dsv4d-gpu.sh" "$BIN" "$TOK" "$OUT" >"$OUT/dsv4d-gpu.txt"
        case $? in
        0) DAEMON_RC=ok ;;
        124) DAEMON_RC="timed out" && fail=1 ;;
        *) DAEMON_RC=FAILED && fail=1 ;;
        esac
    else
        DAEMON_RC="no tokenizer for the tiny checkpoint"
        fail=1
    fi
fi
log "dsv4d on the GPU: $DAEMON_RC ($(elapsed)s)"

# ---------------------------------------------------------------- benchmarks

BENCH_RC=skipped
if [ -n "$BIN" ]; then
    quick=""
    [ "$MODE" = dry ] && quick=--quick
    DSV4_TMP=$(mktemp -d "${TMPDIR:-/tmp}/devcheck.XXXXXX")
    export DSV4_TMP
    timeout 150 "$BIN/tests/cuda/bench_cuda" --json "$OUT/bench.json" ${quick:+"$quick"} \
        >"$OUT/bench.log" 2>&1
    rc=$?
    rm -rf "$DSV4_TMP"
    case $rc in
    0) BENCH_RC=ok ;;
    77) BENCH_RC="skipped (no device)" ;;
    124) BENCH_RC="timed out" && fail=1 ;;
    *) BENCH_RC="failed ($rc)" && fail=1 ;;
    esac
fi

# ---------------------------------------------------------------- the table

{
    echo "device-check $(date -u +%Y-%m-%dT%H:%M:%SZ), $(elapsed)s"
    echo "gpu:      $GPU"
    echo "kernels:  $ARCH; programs: $SOURCE"
    echo
    printf '%-32s %s\n' "test" "result"
    for t in $TESTS; do
        printf '%-32s %s\n' "$(basename "$t")" "${RES[$t]:-NOT RUN}"
    done
    grep -h "^vmm \|^cuda graphs: " "$OUT/test-logs.txt" 2>/dev/null
    echo
    echo "dsv4d on the GPU: $DAEMON_RC"
    [ -f "$OUT/dsv4d-gpu.txt" ] && cat "$OUT/dsv4d-gpu.txt"
    echo
    printf '%-36s %12s  %s\n' "benchmark ($BENCH_RC)" "value" "unit"
    if [ -f "$OUT/bench.log" ]; then
        copy=$(awk '$1 == "RESULT" && $2 == "copy_d2d" {print $3}' "$OUT/bench.log")
        awk -v copy="${copy:-0}" '$1 == "RESULT" {
            note = ""
            if ($4 == "GB/s" && $2 != "copy_d2d" && copy > 0)
                note = sprintf("  (%.0f%% of copy)", 100 * $3 / copy)
            printf "%-36s %12s  %s%s\n", $2, $3, $4, note
        }' "$OUT/bench.log"
    fi
    echo
    if [ $fail -eq 0 ]; then echo "verdict: ok"; else echo "verdict: FAILED"; fi
} >"$OUT/summary.txt"
cat "$OUT/summary.txt"
exit $fail
