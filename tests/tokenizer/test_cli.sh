#!/bin/sh
# test_cli.sh - dsv4 tokenize / chat-encode / chat-parse end to end: the four
# official chat vectors byte for byte through the CLI, ids as a JSON array,
# decode with and without special tokens, parsing a tool-call completion,
# exit status 2 on bad usage and 1 on bad input: garbage and out-of-range ids,
# binary text, tokenizer files of the wrong kind (WordPiece, Unigram),
# truncated, empty or missing, unknown options and missing values, --help
# listing exactly the options each command accepts.
set -u
bin=${DSV4_BIN:?}
data=${DSV4_SHARED_DATA:?}
tok=$data/tokenizer/deepseek-v3-tokenizer.json
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

for i in 1 2 3 4; do
    mode=thinking
    [ $i = 4 ] && mode=chat
    "$bin" chat-encode --mode $mode < "$data/encoding-tests/test_input_$i.json" > out_$i.txt ||
        fail "chat-encode case $i exit $?"
    cmp -s out_$i.txt "$data/encoding-tests/test_output_$i.txt" || fail "chat-encode case $i differs"
done

if [ -f "$tok" ]; then
    got=$(printf '%s' '<｜User｜>你好<｜Assistant｜>' | "$bin" tokenize --tokenizer "$tok")
    [ "$got" = "[128803, 30594, 128804]" ] || fail "tokenize gave $got"
    got=$(printf '' | "$bin" tokenize --tokenizer "$tok")
    [ "$got" = "[]" ] || fail "tokenize of nothing gave $got"
    got=$(echo '[0, 17464, 1]' | "$bin" tokenize --tokenizer "$tok" --decode)
    [ "$got" = "usal" ] || fail "decode gave $got"
    got=$(echo '[0, 17464, 1]' | "$bin" tokenize --tokenizer "$tok" --decode --special)
    [ "$got" = "<｜begin▁of▁sentence｜>usal<｜end▁of▁sentence｜>" ] || fail "decode --special gave $got"
    printf 'Hello, world! 你好 123456\n' > text.txt
    "$bin" tokenize --tokenizer "$tok" < text.txt > ids.json || fail "tokenize exit $?"
    "$bin" tokenize --tokenizer "$tok" --decode < ids.json > back.txt || fail "decode exit $?"
    cmp -s text.txt back.txt || fail "CLI round trip differs"
    echo '[1, 999999999]' | "$bin" tokenize --tokenizer "$tok" --decode > /dev/null 2>&1
    [ $? = 1 ] || fail "decode of a bad id should exit 1"
    echo '{"x": 1}' | "$bin" tokenize --tokenizer "$tok" --decode > /dev/null 2>&1
    [ $? = 1 ] || fail "decode of a non-array should exit 1"
    # ids that are not int32 integers: exit 1 naming the position, no float-cast UB
    for ids in '[1e20]' '[-1e20]' '[1.5]' '["7"]' '[null]' '[[1]]' '[-1]' '[2147483648]' '[1,' '' \
        'garbage'; do
        printf '%s' "$ids" | "$bin" tokenize --tokenizer "$tok" --decode > /dev/null 2> err.txt
        rc=$?
        [ $rc = 1 ] || fail "decode of '$ids' exit $rc, want 1"
        grep -q '^dsv4 tokenize: ' err.txt || fail "decode of '$ids' message: $(cat err.txt)"
    done
    printf '[5, 1e20]' | "$bin" tokenize --tokenizer "$tok" --decode > /dev/null 2> err.txt
    grep -q 'position 1' err.txt || fail "bad id message lacks its position: $(cat err.txt)"
    got=$(printf '[]' | "$bin" tokenize --tokenizer "$tok" --decode)
    [ "$got" = "" ] || fail "decode of [] gave '$got'"
    # binary text (NUL, invalid UTF-8) encodes byte by byte; decoding gives the
    # bytes back with one U+FFFD per invalid byte (tokenizer.h, from_utf8_lossy)
    printf 'a\000b\377\376c\300\n' > bin.txt
    printf 'a\000b\357\277\275\357\277\275c\357\277\275\n' > bin.want
    "$bin" tokenize --tokenizer "$tok" < bin.txt > bin.ids || fail "tokenize of binary exit $?"
    "$bin" tokenize --tokenizer "$tok" --decode < bin.ids > bin.back || fail "decode binary exit $?"
    cmp -s bin.want bin.back || fail "binary decode differs: $(od -c bin.back)"
    # stdin that is a directory: a read error, exit 1
    "$bin" tokenize --tokenizer "$tok" < . > /dev/null 2> err.txt
    [ $? = 1 ] || fail "stdin directory should exit 1"
    # tokenizer files that are not a usable BPE tokenizer.json: exit 1, a message naming it
    : > empty.json
    head -c 4096 "$tok" > trunc.json
    printf '\001\002\377garbage' > binary.json
    echo '{"model": {"type": "WordPiece", "vocab": {"a": 0}, "unk_token": "a"}}' > wordpiece.json
    echo '{"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}' > unigram.json
    echo '[1, 2, 3]' > array.json
    mkdir -p adir
    for f in empty.json trunc.json binary.json wordpiece.json unigram.json array.json adir \
        does-not-exist.json; do
        printf 'x' | "$bin" tokenize --tokenizer "$f" > /dev/null 2> err.txt
        rc=$?
        [ $rc = 1 ] || fail "tokenizer $f exit $rc, want 1"
        grep -q "^dsv4 tokenize: .*$f" err.txt || fail "tokenizer $f message: $(cat err.txt)"
    done
    printf 'x' | "$bin" tokenize --tokenizer wordpiece.json 2>&1 | grep -q 'WordPiece' ||
        fail "WordPiece refusal should name the model type"
else
    echo "note: $tok missing, tokenize checks skipped"
fi

printf '%s' 'Need data.</think>

<｜DSML｜tool_calls>
<｜DSML｜invoke name="get_weather">
<｜DSML｜parameter name="location" string="true">Beijing</｜DSML｜parameter>
<｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>
</｜DSML｜invoke>
</｜DSML｜tool_calls><｜end▁of▁sentence｜>' | "$bin" chat-parse --mode thinking > parsed.json ||
    fail "chat-parse exit $?"
grep -q '"reasoning_content":[[:space:]]*"Need data."' parsed.json || fail "chat-parse reasoning"
grep -q '"name":[[:space:]]*"get_weather"' parsed.json || fail "chat-parse name"
grep -qF '"arguments":	"{\"location\": \"Beijing\", \"days\": 3}"' parsed.json ||
    fail "chat-parse arguments: $(cat parsed.json)"
printf 'plain answer' | "$bin" chat-parse --mode chat > parsed2.json || fail "chat-parse chat exit"
grep -q '"content":[[:space:]]*"plain answer"' parsed2.json || fail "chat-parse chat content"

"$bin" tokenize > /dev/null 2>&1
[ $? = 2 ] || fail "tokenize without --tokenizer should exit 2"
# bad usage: exit 2 and one line on stderr naming the option, nothing on stdout
usage2() { # WANT_IN_MESSAGE ARGS...
    want=$1
    shift
    "$bin" "$@" < /dev/null > out.txt 2> err.txt
    rc=$?
    [ $rc = 2 ] || fail "'$*' exit $rc, want 2"
    grep -qF -- "$want" err.txt || fail "'$*' message lacks '$want': $(cat err.txt)"
    [ -s out.txt ] && fail "'$*' wrote to stdout"
}
usage2 "--tokenizer needs a value" tokenize --tokenizer
usage2 "--tokenizer needs a value" tokenize --tokenizer ''
usage2 "unknown option '--bogus'" tokenize --tokenizer x --bogus
usage2 "unknown option 'extra'" tokenize extra
usage2 "--mode needs a value" chat-encode --mode
usage2 "--reasoning-effort needs a value" chat-encode --reasoning-effort
usage2 "not 'low'" chat-encode --reasoning-effort low
usage2 "not 'sideways'" chat-parse --mode sideways
usage2 "--mode needs a value" chat-parse --mode
usage2 "unknown option '--no-bos'" chat-parse --no-bos
usage2 "unknown option '-x'" chat-encode -x
# --help: stdout, exit 0, and every option the command accepts is listed;
# every option listed is accepted (never reported as unknown)
for spec in "tokenize --tokenizer --decode --special --special-as-text" \
    "chat-encode --mode --reasoning-effort --keep-thinking --no-bos" "chat-parse --mode"; do
    set -- $spec
    cmd=$1
    shift
    "$bin" $cmd --help > help.txt 2> err.txt || fail "$cmd --help exit $?"
    [ -s err.txt ] && fail "$cmd --help wrote to stderr"
    for opt in "$@"; do
        grep -qF -- "$opt" help.txt || fail "$cmd --help does not list $opt"
    done
    for opt in $(grep -o -- '--[a-z][a-z-]*' help.txt | sort -u); do
        "$bin" $cmd $opt < /dev/null > /dev/null 2> err.txt
        grep -q 'unknown option' err.txt && fail "$cmd --help lists $opt but $cmd rejects it"
    done
done
# empty stdin: chat-encode refuses (not a message array), chat-parse gives an empty message
"$bin" chat-encode < /dev/null > /dev/null 2> err.txt
[ $? = 1 ] || fail "chat-encode of empty stdin should exit 1"
"$bin" chat-parse --mode chat < /dev/null > /dev/null 2> err.txt || fail "chat-parse of empty stdin exit $?"
# binary garbage: a message and exit 1 (encode), or a parsed message (parse); never a crash
head -c 3000 "$bin" > garbage.bin
"$bin" chat-encode < garbage.bin > /dev/null 2> err.txt
[ $? = 1 ] || fail "chat-encode of binary should exit 1"
"$bin" chat-parse < garbage.bin > /dev/null 2> err.txt
rc=$?
[ $rc -le 1 ] || fail "chat-parse of binary exit $rc"
"$bin" chat-encode --mode sideways < /dev/null > /dev/null 2>&1
[ $? = 2 ] || fail "bad --mode should exit 2"
echo '[{"role": "wizard"}]' | "$bin" chat-encode > /dev/null 2>err.txt
[ $? = 1 ] || fail "bad role should exit 1"
grep -q wizard err.txt || fail "bad role message: $(cat err.txt)"

echo "$fails failures"
[ $fails = 0 ]
