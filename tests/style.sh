#!/bin/sh
# style.sh: every C/CUDA source matches .clang-format, and every text file
# follows .editorconfig's basics (LF, final newline, no trailing blanks, no
# tabs in C).  Skips (77) when clang-format is not installed.
set -u
cd "$DSV4_SRCDIR" || exit 1
command -v clang-format >/dev/null 2>&1 || { echo "clang-format not installed"; exit 77; }
files=$(git ls-files '*.c' '*.h' '*.cu' '*.cuh' 2>/dev/null || find . -name '*.[ch]' -o -name '*.cu')
rc=0
for f in $files; do
    if ! clang-format --dry-run --Werror "$f" >/dev/null 2>&1; then
        echo "not clang-formatted: $f (run: clang-format -i $f)"
        rc=1
    fi
done
text=$(git ls-files '*.c' '*.h' '*.cu' '*.py' '*.sh' '*.am' '*.inc' '*.ac' '*.md' '*.proto' 2>/dev/null)
for f in $text; do
    [ -s "$f" ] || continue
    if [ "$(tail -c 1 "$f" | od -An -c | tr -d ' ')" != '\n' ]; then
        echo "no final newline: $f"; rc=1
    fi
    if grep -q "$(printf '\r')" "$f"; then echo "CR line ends: $f"; rc=1; fi
    case "$f" in *.md) ;; *)
        if grep -nq '[[:blank:]]$' "$f"; then echo "trailing blanks: $f"; rc=1; fi ;;
    esac
    case "$f" in *.c|*.h|*.cu|*.py)
        if grep -q "$(printf '\t')" "$f"; then echo "tab in source: $f"; rc=1; fi ;;
    esac
done
exit $rc
