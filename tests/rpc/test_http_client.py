"""test_http_client.py - the OpenAI-compatible API through the real `openai`
Python client (from PyPI): completions and chat, streaming and not,
logprobs, stop strings, thinking mode, tools, usage, and the client's
exception classes for the error statuses.  The server is
tests/rpc/http_test_server over the fake service, whose output is
"abcdefghij abcdefghij ..." (a prompt containing "EOS" ends after 5 tokens).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from http_harness import Checks, Server  # noqa: E402

try:
    import openai
except ImportError:
    print("the openai client is not installed (pip install openai)", file=sys.stderr)
    sys.exit(77)

PATTERN = "abcdefghij " * 40
T = Checks()
check = T.check


def client(s, key="none"):
    return openai.OpenAI(base_url=s.base + "/v1", api_key=key, max_retries=0, timeout=20)


def test_models(c):
    models = c.models.list()
    ids = [m.id for m in models.data]
    check(ids == ["fake-model"], f"models: {ids}")


def test_completions(c):
    r = c.completions.create(model="fake-model", prompt="Hello", max_tokens=7)
    ch = r.choices[0]
    check(ch.text == PATTERN[:7], f"completion text {ch.text!r}")
    check(ch.finish_reason == "length", f"finish_reason {ch.finish_reason}")
    check(r.usage.prompt_tokens == 5 and r.usage.completion_tokens == 7 and
          r.usage.total_tokens == 12, f"usage {r.usage}")
    check(r.object == "text_completion" and r.id.startswith("cmpl-"), f"ids {r.id} {r.object}")
    r = c.completions.create(model="fake-model", prompt="Hi", max_tokens=20, stop=["ef", "zz"])
    check(r.choices[0].text == "abcd" and r.choices[0].finish_reason == "stop",
          f"stop: {r.choices[0]}")
    r = c.completions.create(model="fake-model", prompt="say EOS", max_tokens=20)
    check(r.choices[0].text == "abcde" and r.choices[0].finish_reason == "stop",
          f"eos: {r.choices[0]}")
    r = c.completions.create(model="fake-model", prompt=[10, 20, 30], max_tokens=3,
                             temperature=0.7, top_p=0.9, seed=42, presence_penalty=0.5,
                             frequency_penalty=-0.5,
                             extra_body={"top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1})
    check(r.choices[0].text == "abc" and r.usage.prompt_tokens == 3, f"token prompt {r}")
    # no max_tokens: the rest of the fake's context of 4096 tokens
    r = c.completions.create(model="fake-model", prompt="p" * 4090)
    check(r.choices[0].text == PATTERN[:6] and r.choices[0].finish_reason == "length",
          f"default max_tokens: {r.choices[0]}")
    r = c.completions.create(model="fake-model", prompt="Echo:", max_tokens=2, echo=True)
    check(r.choices[0].text == "Echo:ab", f"echo {r.choices[0].text!r}")
    r = c.completions.create(model="fake-model", prompt="x", max_tokens=3, logprobs=2)
    lp = r.choices[0].logprobs
    check(lp.tokens == ["a", "b", "c"] and lp.token_logprobs == [-0.5] * 3 and
          lp.text_offset == [0, 1, 2] and len(lp.top_logprobs) == 3 and
          len(lp.top_logprobs[0]) == 2, f"completion logprobs {lp}")


def test_completions_stream(c):
    chunks = list(c.completions.create(model="fake-model", prompt="x", max_tokens=15,
                                       stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    check(text == PATTERN[:15], f"streamed {text!r}")
    check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 15,
          f"stream usage {chunks[-1]}")
    fin = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    check(fin[-1] == "length", f"stream finish {fin[-1]}")
    chunks = list(c.completions.create(model="fake-model", prompt="x", max_tokens=30,
                                       stream=True, stop="j a"))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    check(text == "abcdefghi", f"stream stop {text!r}")
    check(all("j" not in ch.choices[0].text for ch in chunks if ch.choices),
          "a stop string is never sent, even in part")


def test_chat(c):
    msgs = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hello"}]
    r = c.chat.completions.create(model="fake-model", messages=msgs, max_tokens=8)
    m = r.choices[0].message
    check(m.role == "assistant" and m.content == PATTERN[:8], f"chat content {m.content!r}")
    check(r.choices[0].finish_reason == "length" and r.object == "chat.completion",
          f"chat finish {r.choices[0].finish_reason}")
    check(r.usage.completion_tokens == 8 and r.usage.prompt_tokens > 20, f"chat usage {r.usage}")
    check(not m.tool_calls, "no tool calls")
    r = c.chat.completions.create(model="fake-model", messages=msgs, max_completion_tokens=4,
                                  stop=["c"])
    check(r.choices[0].message.content == "ab" and r.choices[0].finish_reason == "stop",
          f"chat stop {r.choices[0]}")
    # thinking: the fake never closes </think>, so everything is reasoning
    r = c.chat.completions.create(model="fake-model", messages=msgs, max_tokens=6,
                                  extra_body={"chat_template_kwargs": {"thinking": True}})
    m = r.choices[0].message
    reasoning = (m.model_extra or {}).get("reasoning_content")
    check(reasoning == PATTERN[:6] and m.content == "", f"thinking: {reasoning!r} {m.content!r}")
    r = c.chat.completions.create(model="fake-model", messages=msgs, max_tokens=6,
                                  reasoning_effort="high")
    reasoning = (r.choices[0].message.model_extra or {}).get("reasoning_content")
    check(reasoning == PATTERN[:6], f"reasoning_effort turns thinking on: {reasoning!r}")
    r = c.chat.completions.create(model="fake-model", messages=msgs, max_tokens=6,
                                  extra_body={"thinking": {"type": "disabled"}},
                                  reasoning_effort="max")
    m = r.choices[0].message
    check(m.content == PATTERN[:6] and "reasoning_content" not in (m.model_extra or {}),
          f"thinking disabled wins: {m}")
    # tools are rendered into the prompt; the fake answers with text
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    r1 = c.chat.completions.create(model="fake-model", messages=msgs[1:], max_tokens=3)
    r2 = c.chat.completions.create(model="fake-model", messages=msgs[1:], max_tokens=3,
                                   tools=tools)
    check(r2.usage.prompt_tokens > r1.usage.prompt_tokens + 100,
          f"tools in the prompt: {r1.usage.prompt_tokens} -> {r2.usage.prompt_tokens}")
    r3 = c.chat.completions.create(model="fake-model", messages=msgs[1:], max_tokens=3,
                                   tools=tools, tool_choice="none")
    check(r3.usage.prompt_tokens == r1.usage.prompt_tokens, "tool_choice none leaves them out")
    # a conversation with an earlier tool call and its result
    conv = [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    r = c.chat.completions.create(model="fake-model", messages=conv, max_tokens=3, tools=tools)
    check(r.choices[0].message.content == "abc", f"tool result turn: {r.choices[0]}")
    # logprobs
    r = c.chat.completions.create(model="fake-model", messages=msgs, max_tokens=3, logprobs=True,
                                  top_logprobs=3)
    lp = r.choices[0].logprobs.content
    check(len(lp) == 3 and [e.token for e in lp] == ["a", "b", "c"] and
          all(e.logprob == -0.5 and len(e.top_logprobs) == 3 for e in lp) and
          lp[0].bytes == [97], f"chat logprobs {lp}")


def test_chat_stream(c):
    msgs = [{"role": "user", "content": "Hello"}]
    chunks = list(c.chat.completions.create(model="fake-model", messages=msgs, max_tokens=12,
                                            stream=True,
                                            stream_options={"include_usage": True}))
    check(chunks[0].choices[0].delta.role == "assistant", "role first")
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    check(text == PATTERN[:12], f"chat stream {text!r}")
    check(chunks[-1].usage.completion_tokens == 12 and chunks[-1].choices == [],
          f"usage chunk {chunks[-1]}")
    chunks = list(c.chat.completions.create(
        model="fake-model", messages=msgs, max_tokens=5, stream=True,
        extra_body={"chat_template_kwargs": {"enable_thinking": True}}))
    reasoning = "".join((ch.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                        for ch in chunks if ch.choices)
    check(reasoning == PATTERN[:5], f"streamed reasoning {reasoning!r}")
    chunks = list(c.chat.completions.create(model="fake-model", messages=msgs, max_tokens=3,
                                            stream=True, logprobs=True, top_logprobs=1))
    entries = [e for ch in chunks if ch.choices and ch.choices[0].logprobs
               for e in ch.choices[0].logprobs.content]
    check([e.token for e in entries] == ["a", "b", "c"], f"streamed logprobs {entries}")


def test_errors(s, c):
    msgs = [{"role": "user", "content": "x"}]
    cases = [
        (openai.BadRequestError, lambda: c.completions.create(model="fake-model", prompt="x",
                                                              n=2)),
        (openai.BadRequestError, lambda: c.completions.create(model="fake-model", prompt="x",
                                                              max_tokens=100000)),
        (openai.BadRequestError, lambda: c.chat.completions.create(
            model="fake-model", messages=msgs, temperature=-1)),
        (openai.BadRequestError, lambda: c.chat.completions.create(
            model="fake-model", messages=msgs, logit_bias={"5": 10})),
        (openai.NotFoundError, lambda: c.chat.completions.create(model="gpt-9", messages=msgs)),
    ]
    for exc, fn in cases:
        try:
            fn()
            check(False, f"expected {exc.__name__}")
        except exc as e:
            check(e.body is not None and "message" in e.body, f"{exc.__name__} body {e.body}")
        except Exception as e:  # noqa: BLE001
            check(False, f"expected {exc.__name__}, got {type(e).__name__}: {e}")
    try:
        c.completions.create(model="fake-model", prompt="x", max_tokens=100000)
    except openai.BadRequestError as e:
        check(e.code == "context_length_exceeded" and "context" in e.message,
              f"context error: {e.code} {e.message}")
    s.cmd("keys secret")
    try:
        c.models.list()
        check(False, "expected AuthenticationError")
    except openai.AuthenticationError:
        check(True, "401")
    r = client(s, "secret").completions.create(model="fake-model", prompt="x", max_tokens=2)
    check(r.choices[0].text == "ab", "the right key works")
    s.cmd("keys")
    s.cmd("state draining SIGTERM")
    try:
        c.completions.create(model="fake-model", prompt="x", max_tokens=2)
        check(False, "expected 503")
    except openai.InternalServerError as e:
        check(e.status_code == 503, f"draining: {e.status_code}")
    s.cmd("state ready")


def main():
    with Server("--delay-ms", "1") as s:
        c = client(s)
        test_models(c)
        test_completions(c)
        test_completions_stream(c)
        test_chat(c)
        test_chat_stream(c)
        test_errors(s, c)
    T.done()


if __name__ == "__main__":
    main()
