"""herald's OpenAI-compatible HTTP door through the official `openai` Python SDK.

Run by tests/it/openai_http.rs against a daemon in front of the DashScope double (paced at
real time). Environment: HERALD_OPENAI_BASE_URL (http://HOST:PORT/v1), HERALD_OPENAI_KEY (the
daemon's bearer token), HERALD_OUT (a directory for the audio). Prints one JSON object: what
each call returned; the Rust test decodes the audio and asserts.
"""

import base64
import json
import os
import sys
import time

import httpx
import openai

BASE = os.environ["HERALD_OPENAI_BASE_URL"]
KEY = os.environ["HERALD_OPENAI_KEY"]
OUT = os.environ["HERALD_OUT"]
TEXT = os.environ.get("HERALD_TEXT", "@440Hz Hello from herald.")
LONG = os.environ.get("HERALD_LONG_TEXT", TEXT)

client = openai.OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=60)
result = {"sdk_version": openai.__version__, "formats": {}}


def save(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def error_of(call):
    try:
        call()
    except openai.APIStatusError as e:
        return {
            "class": type(e).__name__,
            "status": e.status_code,
            "param": e.param,
            "type": e.type,
            "code": e.code,
            "message": e.message,
            "retry_after": e.response.headers.get("retry-after"),
        }
    return {"class": None}


# Every response format, whole.
for fmt in ["mp3", "opus", "flac", "wav", "pcm"]:
    r = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format=fmt)
    save(fmt, r.content)
    h = r.response.headers
    result["formats"][fmt] = {
        "bytes": len(r.content),
        "content_type": h.get("content-type"),
        "sample_rate": int(h.get("x-herald-sample-rate", "0")),
        "model": h.get("x-herald-model"),
        "voice": h.get("x-herald-voice"),
        "chunked": h.get("transfer-encoding") == "chunked",
    }

# Streaming: bytes as they come.
t0 = time.monotonic()
first = None
total = 0
chunks = 0
data = bytearray()
with client.audio.speech.with_streaming_response.create(
    model="tts-1", voice="alloy", input=LONG, response_format="pcm"
) as r:
    for chunk in r.iter_bytes():
        if chunk and first is None:
            first = time.monotonic() - t0
        chunks += 1
        total += len(chunk)
        data.extend(chunk)
end = time.monotonic() - t0
save("stream.pcm", bytes(data))
result["stream"] = {"first_s": first, "end_s": end, "chunks": chunks, "bytes": total}

# stream_format="sse": the SDK returns the raw response; read its events.
events = []
audio = bytearray()
t0 = time.monotonic()
first = None
with client.audio.speech.with_streaming_response.create(
    model="tts-1", voice="alloy", input=TEXT, response_format="pcm", stream_format="sse"
) as r:
    content_type = r.headers.get("content-type")
    for line in r.iter_lines():
        if not line.startswith("data: "):
            continue
        event = json.loads(line[len("data: "):])
        if first is None:
            first = time.monotonic() - t0
        events.append(event["type"])
        if event["type"] == "speech.audio.delta":
            audio.extend(base64.b64decode(event["audio"]))
        elif event["type"] == "speech.audio.done":
            result["sse_usage"] = event["usage"]
save("sse.pcm", bytes(audio))
result["sse"] = {"content_type": content_type, "events": events, "first_s": first}

# Herald's own model and voice names, and an extension field.
r = client.audio.speech.create(
    model="qwen3-tts-flash", voice="Cherry", input=TEXT, response_format="pcm",
    extra_body={"sample_rate": 16000},
)
save("qwen16k.pcm", r.content)
result["herald_names"] = {
    "model": r.response.headers.get("x-herald-model"),
    "voice": r.response.headers.get("x-herald-voice"),
    "sample_rate": int(r.response.headers.get("x-herald-sample-rate", "0")),
}

# Errors.
wrong = openai.OpenAI(base_url=BASE, api_key="wrong-key-0123456789", max_retries=0)
result["errors"] = {
    "wrong_key": error_of(lambda: wrong.audio.speech.create(model="tts-1", voice="alloy", input=TEXT)),
    "bad_voice": error_of(lambda: client.audio.speech.create(model="qwen3-tts-flash", voice="no-such-voice", input=TEXT)),
    "aac": error_of(lambda: client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="aac")),
    "speed": error_of(lambda: client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, speed=0.3)),
    "empty": error_of(lambda: client.audio.speech.create(model="tts-1", voice="alloy", input=" ")),
    "model": error_of(lambda: client.audio.speech.create(model="no-such-model", voice="alloy", input=TEXT)),
    "wrong_key_models": error_of(lambda: wrong.models.list()),
}

# Listings.
result["models"] = [m.id for m in client.models.list()]
voices = httpx.get(BASE + "/audio/voices", headers={"Authorization": "Bearer " + KEY}).json()
result["voices"] = voices["voices"]

print(json.dumps(result))
