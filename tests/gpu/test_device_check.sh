#!/bin/sh
# test_device_check.sh: tests/gpu/device-check.sh is shellcheck-clean, parses
# its options and prints its usage (it cannot run its checks without a GPU;
# its --dry-run builds and is run by hand).  Skips (77) without shellcheck.
set -u
cd "$DSV4_SRCDIR" || exit 1
s=tests/gpu/device-check.sh
bash -n "$s" || { echo "syntax error in $s"; exit 1; }
bash "$s" --help | grep -q -- "--dry-run" || { echo "$s --help lacks the modes"; exit 1; }
bash "$s" --bogus >/dev/null 2>&1
[ $? -eq 2 ] || { echo "$s accepts an unknown option"; exit 1; }
command -v shellcheck >/dev/null 2>&1 || { echo "shellcheck not installed"; exit 77; }
shellcheck "$s" tests/gpu/test_device_check.sh || exit 1
echo "ok"
