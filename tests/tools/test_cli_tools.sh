#!/bin/sh
# test_cli_tools.sh - the `dsv4` dispatcher, `dsv4 convert` and `dsv4 bench`
# on bad input: unknown commands and options, missing or malformed values,
# wrong operand counts, SRC == DST, DST inside SRC, missing SRC, a file where
# a directory belongs.  Each must exit 2 (usage) or 1 (input) with a one-line
# message naming the problem, and create nothing.  Also: every --help goes to
# stdout, exits 0 and lists every option the command accepts, and a smallest
# real `dsv4 bench linear` run works.
set -u
bin=${DSV4_BIN:?}
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# expect RC WANT_IN_MESSAGE ARGS...: exit status RC, stderr contains the text
expect() {
    want_rc=$1
    want=$2
    shift 2
    "$bin" "$@" < /dev/null > out.txt 2> err.txt
    rc=$?
    [ $rc = "$want_rc" ] || fail "'$*' exit $rc, want $want_rc: $(cat err.txt)"
    grep -qF -- "$want" err.txt || fail "'$*' message lacks '$want': $(cat err.txt)"
}

# dispatcher
expect 2 "usage: dsv4 COMMAND"
expect 2 "unknown command 'nope'" nope
expect 2 "unknown command ''" ""
expect 2 "unexpected argument '--bogus'" version --bogus
"$bin" --help > out.txt 2> err.txt || fail "dsv4 --help exit $?"
for cmd in version tokenize chat-encode chat-parse convert bench; do
    grep -q "^  $cmd " out.txt || fail "dsv4 --help does not list $cmd"
done
"$bin" --version | grep -q '^dsv4 ' || fail "dsv4 --version"
"$bin" version | grep -q '^features: ' || fail "dsv4 version"

# convert: usage errors (2)
mkdir -p src
echo '{}' > src/config.json
: > afile
expect 2 "missing an operand" convert
expect 2 "missing an operand" convert src
expect 2 "extra operand c" convert src b c
expect 2 "unknown option --bogus" convert --bogus src dst
expect 2 "must not be empty" convert "" dst
expect 2 "must not be empty" convert src ""
expect 2 "missing value for --threads" convert src dst --threads
for v in 0 -3 abc 12x 99999999999999999999 ""; do
    expect 2 "bad --threads '$v'" convert --threads "$v" src dst
done
for v in 0 -1 x; do
    expect 2 "bad --sample '$v'" convert --sample "$v" src dst
done
expect 2 "unknown conversion mode 'foo'" convert --mode foo src dst
expect 2 "unknown naming 'foo'" convert --naming foo src dst
# convert: paths (1), nothing created
expect 1 "SRC does-not-exist: No such file" convert does-not-exist dst
expect 1 "SRC afile is not a directory" convert afile dst
expect 1 "is the source directory" convert src src
expect 1 "is the source directory" convert src ./src/
expect 1 "is the source directory" convert src "$(pwd)/src/."
expect 1 "is inside the source directory" convert src src/out
expect 1 "is inside the source directory" convert src ./src/out/
mkdir -p src/sub
expect 1 "is inside the source directory" convert src src/sub/out
ln -s src srclink
expect 1 "is the source directory" convert src srclink
expect 1 "is inside the source directory" convert srclink src/x
expect 1 "exists and is not a directory" convert src afile
expect 1 "parent directory no/such: No such file" convert src no/such/dst
[ -e dst ] && fail "a failed convert created dst"
[ -e src/out ] && fail "a refused convert created src/out"
[ -e src/x ] && fail "a refused convert created src/x"
[ "$(ls src)" = "config.json
sub" ] || fail "a refused convert wrote into src: $(ls src)"
# an SRC that is a directory but no checkpoint: exit 1, message from the converter
expect 1 "dsv4 convert: " convert src dst2

# bench
expect 2 "usage: dsv4 bench SUBJECT" bench
expect 2 "unknown subject 'nope'" bench nope
expect 2 "unknown option '--bogus'" bench linear --bogus
expect 2 "--mem needs a value" bench linear --mem
for v in 0 15 -1 abc 1e3 65537 99999999999999999999; do
    expect 2 "bad --mem '$v'" bench linear --mem "$v"
done
for v in 0 1025 2x ""; do
    expect 2 "bad --threads '$v'" bench linear --threads "$v"
done
for v in nan inf -1 61 1e400 0.3s; do
    expect 2 "bad --time '$v'" bench linear --time "$v"
done
for v in foo "" , f32,foo nvfp; do
    expect 2 "bad --formats '$v'" bench linear --formats "$v"
done
for v in 0 1,,2 4097 x 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17; do
    expect 2 "bad --batches '$v'" bench linear --batches "$v"
done
expect 2 "cannot hold one f32 weight" bench linear --mem 16
expect 2 "cannot hold one fp8 weight" bench linear --mem 16 --formats nvfp4,fp8
# the smallest real run: one format, one batch, no minimum time
"$bin" bench linear --mem 16 --formats nvfp4 --batches 1 --time 0 --threads 2 > out.txt 2> err.txt ||
    fail "bench linear smallest run exit $?: $(cat err.txt)"
[ "$(grep -c '^nvfp4 ' out.txt)" = 2 ] || fail "bench linear rows: $(cat out.txt)"
grep -q '^f32 ' out.txt && fail "bench linear ran an unselected format"

# --help: stdout, exit 0, every accepted option listed, every listed option accepted
for spec in "convert --mode --naming --verify --sample --threads --quiet" \
    "bench_linear --threads --mem --time --formats --batches" "version"; do
    set -- $spec
    cmd=$(echo "$1" | tr _ ' ')
    shift
    "$bin" $cmd --help > help.txt 2> err.txt || fail "$cmd --help exit $?"
    [ -s err.txt ] && fail "$cmd --help wrote to stderr"
    for opt in "$@"; do
        grep -qF -- "$opt" help.txt || fail "$cmd --help does not list $opt"
    done
    for opt in $(grep -o -- '--[a-z][a-z-]*' help.txt | sort -u); do
        [ "$opt" = --help ] && continue
        "$bin" $cmd $opt < /dev/null > /dev/null 2> err.txt
        grep -qi 'unknown option\|unrecognized' err.txt && fail "$cmd --help lists $opt, rejected"
    done
done
"$bin" bench --help > help.txt || fail "bench --help exit $?"
grep -q '^  linear ' help.txt || fail "bench --help does not list linear"

echo "$fails failures"
[ $fails = 0 ]
