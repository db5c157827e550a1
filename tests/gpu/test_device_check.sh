#!/bin/sh
# test_device_check.sh: tests/gpu/device-check.sh (and dsv4d-gpu.sh, which it
# runs) is shellcheck-clean, parses
# its options and prints its usage (it cannot run its checks without a GPU;
# its --dry-run builds and is run by hand).  Skips (77) without shellcheck.
set -u
cd "$DSV4_SRCDIR" || exit 1
s=tests/gpu/device-check.sh
bash -n "$s" || { echo "syntax error in $s"; exit 1; }
bash "$s" --help | grep -q -- "--dry-run" || { echo "$s --help lacks the modes"; exit 1; }
bash "$s" --bogus >/dev/null 2>&1
[ $? -eq 2 ] || { echo "$s accepts an unknown option"; exit 1; }
# dsv4d-gpu.sh's steps on the CPU (devsim): start, answer, kill a worker, come back mapping the
# device weights, answer the same, drain
tok=${DSV4_SHARED_DATA:-../shared/data}/tokenizer/deepseek-v3-tokenizer.json
if [ -n "${DSV4_BUILDDIR:-}" ] && [ -x "$DSV4_BUILDDIR/dsv4d" ] && [ -f "$tok" ]; then
    out=$(mktemp -d "${TMPDIR:-/tmp}/devcheck-test.XXXXXX")
    DSV4D_GPU_DEVICE=devsim timeout 120 bash tests/gpu/dsv4d-gpu.sh "$DSV4_BUILDDIR" "$tok" "$out" \
        >"$out/res.txt"
    rc=$?
    cat "$out/res.txt"
    for n in 1 2; do
        grep -q "^dsv4d-devsim-${n}w ok .* $n rank loads mapped / $n uploaded" "$out/res.txt" ||
            { echo "dsv4d-gpu.sh (devsim, $n workers) failed (exit $rc)"; tail -n 30 "$out/dsv4d-gpu.log"; rm -rf "$out"; exit 1; }
    done
    rm -rf "$out"
fi
command -v shellcheck >/dev/null 2>&1 || { echo "shellcheck not installed"; exit 77; }
bash -n tests/gpu/dsv4d-gpu.sh || { echo "syntax error in tests/gpu/dsv4d-gpu.sh"; exit 1; }
shellcheck "$s" tests/gpu/dsv4d-gpu.sh tests/gpu/test_device_check.sh || exit 1
echo "ok"
