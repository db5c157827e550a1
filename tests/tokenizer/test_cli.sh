#!/bin/sh
# test_cli.sh - dsv4 tokenize / chat-encode / chat-parse end to end: the four
# official chat vectors byte for byte through the CLI, ids as a JSON array,
# decode with and without special tokens, parsing a tool-call completion,
# exit status 2 on bad usage and 1 on bad input.
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
"$bin" chat-encode --mode sideways < /dev/null > /dev/null 2>&1
[ $? = 2 ] || fail "bad --mode should exit 2"
echo '[{"role": "wizard"}]' | "$bin" chat-encode > /dev/null 2>err.txt
[ $? = 1 ] || fail "bad role should exit 1"
grep -q wizard err.txt || fail "bad role message: $(cat err.txt)"

echo "$fails failures"
[ $fails = 0 ]
