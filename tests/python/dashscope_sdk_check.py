#!/usr/bin/env python3
"""Drive the DashScope double (tests/it/support/dashscope) with the official `dashscope`
Python SDK, to prove the double speaks the protocol the SDK expects.

Run by the integration test `dashscope_double` (tests/it/dashscope_double.rs) against a
started double, which has scripted faults for the model names used below (e.g.
`cosyvoice-v3-flash-throttled` answers 429).

Environment (the SDK reads the first two at import):
  DASHSCOPE_HTTP_BASE_URL  the double's base URL, http://127.0.0.1:PORT/api/v1
  DASHSCOPE_API_KEY        the key the double expects
  HERALD_DS_MS_PER_UNIT    audio ms per text unit (default 40)
  HERALD_DS_TONE_HZ        tone frequency (default 440)

Prints one JSON object: {"sdk_version", "checks": {name: observations}, "failures": [...]}, and
exits 1 when a failure was recorded.
"""

import asyncio
import base64
import io
import os
import urllib.request
import wave

from dashscope import AioMultiModalConversation, MultiModalConversation
from dashscope.audio.http_tts import HttpSpeechSynthesizer
from harness import check, expect, report

MS_PER_UNIT = int(os.environ.get("HERALD_DS_MS_PER_UNIT", "40"))
TONE_HZ = float(os.environ.get("HERALD_DS_TONE_HZ", "440"))

TEXT = "Hello there. Second sentence!"
COSY = "cosyvoice-v3-flash"
QWEN = "qwen3-tts-flash"
MINIMAX = "MiniMax/speech-2.8-hd"


def units(text):
    def cjk(c):
        o = ord(c)
        return (
            0x3400 <= o <= 0x4DBF
            or 0x4E00 <= o <= 0x9FFF
            or 0xF900 <= o <= 0xFAFF
            or 0x20000 <= o <= 0x3134F
        )

    return sum(2 if cjk(c) else 1 for c in text)


def expected_pcm_bytes(text, rate, channels=1):
    ms = units(text) * MS_PER_UNIT
    return round(rate * ms / 1000) * 2 * channels


def tone_hz(pcm, rate, channels=1):
    """Frequency of a mono (or first-channel) s16le tone by counting zero crossings."""
    n = len(pcm) // 2
    samples = [
        int.from_bytes(pcm[2 * i : 2 * i + 2], "little", signed=True)
        for i in range(0, n, channels)
    ]
    if len(samples) < 2:
        return 0.0
    crossings = sum(
        1 for a, b in zip(samples, samples[1:]) if (a < 0) != (b < 0)
    )
    return crossings / 2 / (len(samples) / rate)


def close_to(hz, want=TONE_HZ):
    return abs(hz - want) < want * 0.03


def download(url):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=30) as r:
        return r.read()


def collect_cosy_stream(**kw):
    """Chunks, the final result and the exception (if any) of a streaming HTTP TTS call."""
    chunks, finals, exc = [], [], None
    try:
        for r in HttpSpeechSynthesizer.call(stream=True, **kw):
            if r.audio_url is not None:
                finals.append(r)
            elif r.audio_data:
                chunks.append(r.audio_data)
    except Exception as e:  # noqa: BLE001 - observed
        exc = e
    return chunks, finals, exc


def collect_mmc_stream(**kw):
    responses, exc = [], None
    try:
        for r in MultiModalConversation.call(stream=True, **kw):
            responses.append(r)
    except Exception as e:  # noqa: BLE001 - observed
        exc = e
    return responses, exc


# --- CosyVoice over HttpSpeechSynthesizer -------------------------------------------------


@check
def cosy_stream_pcm():
    chunks, finals, exc = collect_cosy_stream(
        model=COSY,
        text=TEXT,
        voice="longanyang",
        audio_format="pcm",
        sample_rate=16000,
    )
    expect(exc is None, f"raised {exc!r}")
    expect(len(finals) == 1, f"{len(finals)} final results")
    audio = b"".join(chunks)
    final = finals[0]
    expect(final.audio_data == audio, "final audio_data != joined chunks")
    expect(
        len(audio) == expected_pcm_bytes(TEXT, 16000),
        f"{len(audio)} bytes, want {expected_pcm_bytes(TEXT, 16000)}",
    )
    hz = tone_hz(audio, 16000)
    expect(close_to(hz), f"tone {hz} Hz")
    from_url = download(final.audio_url)
    expect(from_url == audio, "URL audio differs from the streamed audio")
    sentence_indexes = sorted({s.get("index") for s in final.sentences})
    expect(sentence_indexes == [0, 1], f"sentences {sentence_indexes}")
    usage = final.usage or {}
    expect(usage.get("characters") == units(TEXT), f"usage {usage}")
    expect(final.audio_id == "audio_" + final.request_id, "audio id")
    return {
        "chunks": len(chunks),
        "bytes": len(audio),
        "hz": round(hz, 1),
        "url": final.audio_url,
        "characters": usage.get("characters"),
        "request_id": final.request_id,
    }


@check
def cosy_stream_wav_sdk_defaults():
    # The SDK's defaults: wav at 24000 Hz.
    chunks, finals, exc = collect_cosy_stream(
        model=COSY, text=TEXT, voice="loongabby_v3"
    )
    expect(exc is None, f"raised {exc!r}")
    audio = b"".join(chunks)
    expect(audio[:4] == b"RIFF" and audio[8:12] == b"WAVE", "no RIFF header")
    with wave.open(io.BytesIO(audio)) as w:
        rate, frames = w.getframerate(), w.getnframes()
        pcm = w.readframes(frames)
    expect(rate == 24000, f"rate {rate}")
    expect(len(pcm) == expected_pcm_bytes(TEXT, 24000), f"{len(pcm)} PCM bytes")
    expect(close_to(tone_hz(pcm, rate)), "tone")
    return {"chunks": len(chunks), "bytes": len(audio), "rate": rate, "frames": frames}


@check
def cosy_stream_mp3():
    chunks, finals, exc = collect_cosy_stream(
        model=COSY,
        text=TEXT,
        voice="longanyang",
        audio_format="mp3",
        sample_rate=22050,
    )
    expect(exc is None, f"raised {exc!r}")
    audio = b"".join(chunks)
    expect(audio[:3] == b"ID3", f"starts {audio[:4]!r}")
    expect(download(finals[0].audio_url) == audio, "URL audio differs")
    return {"chunks": len(chunks), "bytes": len(audio), "url": finals[0].audio_url}


@check
def cosy_nonstream_wav():
    r = HttpSpeechSynthesizer.call(
        model=COSY,
        text="你好世界。Hi!",
        voice="longanyang",
        audio_format="wav",
        sample_rate=16000,
        stream=False,
    )
    expect(r.status_code == 200, f"status {r.status_code}")
    expect(r.audio_url and r.audio_url.startswith("http://127.0.0.1:"), "url")
    expect(r.audio_url.split("?")[0].endswith(".wav"), "extension")
    expect(r.audio_id == "audio_" + r.request_id, "audio id")
    data = download(r.audio_url)
    with wave.open(io.BytesIO(data)) as w:
        rate, frames = w.getframerate(), w.getnframes()
        pcm = w.readframes(frames)
    want = expected_pcm_bytes("你好世界。Hi!", 16000)
    expect(len(pcm) == want, f"{len(pcm)} PCM bytes, want {want}")
    expect(close_to(tone_hz(pcm, rate)), "tone")
    usage = r.usage or {}
    expect(usage.get("characters") == 12, f"usage {usage}")
    return {"url": r.audio_url, "frames": frames, "characters": usage.get("characters")}


# --- Qwen-TTS over MultiModalConversation -------------------------------------------------


@check
def qwen3_stream():
    responses, exc = collect_mmc_stream(
        model=QWEN, text=TEXT, voice="Cherry", language_type="English"
    )
    expect(exc is None, f"raised {exc!r}")
    expect(all(r.status_code == 200 for r in responses), "non-200 response")
    chunks = [
        base64.b64decode(r.output.audio.data)
        for r in responses
        if r.output.audio and r.output.audio.data
    ]
    final = responses[-1]
    expect(final.output.finish_reason == "stop", "last is not stop")
    expect(
        all(r.output.finish_reason == "null" for r in responses[:-1]),
        "finish_reason before the end is not the string 'null'",
    )
    first = chunks[0]
    header = first[:4] == b"RIFF"
    expect(header, "first chunk has no RIFF header")
    pcm = b"".join(chunks)[44:]
    expect(len(pcm) == expected_pcm_bytes(TEXT, 24000), f"{len(pcm)} PCM bytes")
    hz = tone_hz(pcm, 24000)
    expect(close_to(hz), f"tone {hz}")
    expect(final.usage.characters == units(TEXT), f"usage {final.usage}")
    url_audio = download(final.output.audio.url)
    expect(url_audio[44:] == pcm, "URL audio differs")
    return {
        "responses": len(responses),
        "chunks": len(chunks),
        "pcm_bytes": len(pcm),
        "hz": round(hz, 1),
        "first_chunk_riff": header,
    }


@check
def qwen3_stream_pcm_16k():
    responses, exc = collect_mmc_stream(
        model=QWEN,
        text=TEXT,
        voice="Ethan",
        response_format="pcm",
        sample_rate=16000,
    )
    expect(exc is None, f"raised {exc!r}")
    pcm = b"".join(
        base64.b64decode(r.output.audio.data)
        for r in responses
        if r.output.audio and r.output.audio.data
    )
    expect(pcm[:4] != b"RIFF", "pcm has a RIFF header")
    expect(len(pcm) == expected_pcm_bytes(TEXT, 16000), f"{len(pcm)} bytes")
    expect(close_to(tone_hz(pcm, 16000)), "tone")
    return {"bytes": len(pcm)}


@check
def qwen3_nonstream():
    r = MultiModalConversation.call(model=QWEN, text=TEXT, voice="Serena")
    expect(r.status_code == 200, f"status {r.status_code}")
    expect(r.output.finish_reason == "stop", "finish_reason")
    expect(r.output.audio.data == "", "non-empty data")
    data = download(r.output.audio.url)
    expect(data[:4] == b"RIFF", "no RIFF")
    pcm = data[44:]
    expect(len(pcm) == expected_pcm_bytes(TEXT, 24000), f"{len(pcm)} bytes")
    expect(close_to(tone_hz(pcm, 24000)), "tone")
    return {"url": r.output.audio.url, "bytes": len(data)}


@check
def qwen3_instruct():
    r = MultiModalConversation.call(
        model="qwen3-tts-instruct-flash",
        text=TEXT,
        voice="Cherry",
        instructions="Speak slowly and calmly.",
        optimize_instructions=True,
    )
    expect(r.status_code == 200, f"status {r.status_code} {r.code} {r.message}")
    return {"status": r.status_code}


@check
def qwen3_stream_aio():
    # The asyncio client has its own SSE parser (aiohttp, `line.startswith("event:error")`).
    async def run(model):
        out = []
        async for r in await AioMultiModalConversation.call(
            model=model, text=TEXT, voice="Cherry", stream=True
        ):
            out.append(r)
        return out

    responses = asyncio.run(run(QWEN))
    pcm = b"".join(
        base64.b64decode(r.output.audio.data)
        for r in responses
        if r.status_code == 200 and r.output.audio and r.output.audio.data
    )[44:]
    expect(len(pcm) == expected_pcm_bytes(TEXT, 24000), f"{len(pcm)} bytes")
    expect(responses[-1].output.finish_reason == "stop", "no stop")
    errored = asyncio.run(run(QWEN + "-midstream"))
    statuses = [r.status_code for r in errored]
    expect(errored[-1].code == "InternalError", f"code {errored[-1].code}")
    return {"pcm_bytes": len(pcm), "error_statuses": statuses}


# --- MiniMax over MultiModalConversation --------------------------------------------------


@check
def minimax_stream_pcm():
    responses, exc = collect_mmc_stream(
        model=MINIMAX,
        text=TEXT,
        voice="male-qn-qingse",
        audio_setting={"format": "pcm", "sample_rate": 16000},
    )
    expect(exc is None, f"raised {exc!r}")
    expect(all(r.status_code == 200 for r in responses), "non-200")
    outs = [r.output for r in responses]
    expect(
        all(o["base_resp"]["status_code"] == 0 for o in outs), "base_resp not 0"
    )
    chunks = [bytes.fromhex(o["data"]["audio"]) for o in outs if o["data"]["status"] == 1]
    final = outs[-1]
    expect(final["data"]["status"] == 2, "last status is not 2")
    pcm = b"".join(chunks)
    aggregated = bytes.fromhex(final["data"]["audio"])
    expect(aggregated == pcm, "aggregated audio differs from the chunks")
    expect(len(pcm) == expected_pcm_bytes(TEXT, 16000), f"{len(pcm)} bytes")
    expect(close_to(tone_hz(pcm, 16000)), "tone")
    extra = final["extra_info"]
    expect(extra["audio_length"] == units(TEXT) * MS_PER_UNIT, f"extra {extra}")
    expect(extra["audio_sample_rate"] == 16000, "extra rate")
    expect(responses[-1].usage.characters == units(TEXT), "usage")
    return {"chunks": len(chunks), "bytes": len(pcm), "extra_info": extra}


@check
def minimax_stream_defaults_mp3():
    responses, exc = collect_mmc_stream(
        model=MINIMAX,
        text=TEXT,
        voice_setting={"voice_id": "female-shaonv", "speed": 1.0, "vol": 1.0},
        stream_options={"exclude_aggregated_audio": True},
    )
    expect(exc is None, f"raised {exc!r}")
    outs = [r.output for r in responses]
    chunks = [bytes.fromhex(o["data"]["audio"]) for o in outs if o["data"]["status"] == 1]
    mp3 = b"".join(chunks)
    expect(mp3[:3] == b"ID3", "no ID3")
    final = outs[-1]
    expect(final["data"]["audio"] == "", "aggregated audio not excluded")
    extra = final["extra_info"]
    expect(extra["audio_format"] == "mp3" and extra["audio_sample_rate"] == 32000, f"{extra}")
    return {"chunks": len(chunks), "bytes": len(mp3)}


@check
def minimax_nonstream():
    r = MultiModalConversation.call(
        model=MINIMAX,
        text=TEXT,
        voice="English_Graceful_Lady",
        audio_setting={"format": "wav", "sample_rate": 24000},
    )
    expect(r.status_code == 200, f"status {r.status_code}")
    data = bytes.fromhex(r.output["data"]["audio"])
    with wave.open(io.BytesIO(data)) as w:
        rate, pcm = w.getframerate(), w.readframes(w.getnframes())
    expect(rate == 24000, f"rate {rate}")
    expect(len(pcm) == expected_pcm_bytes(TEXT, 24000), f"{len(pcm)} bytes")
    return {"bytes": len(data), "status": r.output["data"]["status"]}


# --- Errors: what the SDK makes of each failure shape -------------------------------------


@check
def err_401_cosy():
    r = HttpSpeechSynthesizer.call(
        model=COSY, text=TEXT, voice="longanyang", api_key="sk-wrong-key"
    )
    expect(r.status_code == 401 and r.code == "InvalidApiKey", f"{r.status_code} {r.code}")
    chunks, finals, exc = collect_cosy_stream(
        model=COSY, text=TEXT, voice="longanyang", api_key="sk-wrong-key"
    )
    expect(isinstance(exc, RuntimeError) and "401" in str(exc), f"stream: {exc!r}")
    return {
        "status": r.status_code,
        "code": r.code,
        "message": r.message,
        "stream_exception": type(exc).__name__,
        "stream_message": str(exc),
    }


@check
def err_401_qwen3_stream():
    responses, exc = collect_mmc_stream(
        model=QWEN, text=TEXT, voice="Cherry", api_key="sk-wrong-key"
    )
    expect(exc is None, f"raised {exc!r}")
    r = responses[0]
    expect(len(responses) == 1, f"{len(responses)} responses")
    expect(r.status_code == 401 and r.code == "InvalidApiKey", f"{r.status_code} {r.code}")
    return {"status": r.status_code, "code": r.code}


@check
def err_429():
    r = HttpSpeechSynthesizer.call(
        model=COSY + "-throttled", text=TEXT, voice="longanyang"
    )
    expect(r.status_code == 429 and r.code == "Throttling.RateQuota", f"{r.status_code} {r.code}")
    responses, exc = collect_mmc_stream(
        model=QWEN + "-throttled", text=TEXT, voice="Cherry"
    )
    expect(exc is None, f"raised {exc!r}")
    q = responses[0]
    expect(q.status_code == 429 and q.code == "Throttling.RateQuota", f"{q.status_code} {q.code}")
    return {
        "cosy_status": r.status_code,
        "cosy_code": r.code,
        "qwen_status": q.status_code,
        "qwen_code": q.code,
        "request_id": q.request_id,
    }


@check
def err_sse_midstream_qwen3():
    responses, exc = collect_mmc_stream(
        model=QWEN + "-midstream", text=TEXT, voice="Cherry"
    )
    expect(exc is None, f"raised {exc!r}")
    statuses = [r.status_code for r in responses]
    last = responses[-1]
    expect(statuses[:-1] == [200, 200], f"statuses {statuses}")
    expect(last.code == "InternalError", f"code {last.code}")
    return {
        "statuses": statuses,
        "code": last.code,
        "message": last.message,
        "request_id": last.request_id,
    }


@check
def err_sse_midstream_cosy():
    chunks, finals, exc = collect_cosy_stream(
        model=COSY + "-midstream", text=TEXT, voice="longanyang", audio_format="pcm"
    )
    expect(isinstance(exc, RuntimeError), f"raised {exc!r}")
    expect(len(chunks) == 2 and not finals, f"{len(chunks)} chunks {len(finals)} finals")
    return {
        "chunks_before_error": len(chunks),
        "exception": type(exc).__name__,
        "message": str(exc),
    }


def attempt(fn, **kw):
    try:
        return fn(**kw), None
    except Exception as e:  # noqa: BLE001 - observed
        return None, e


@check
def err_ok_with_code():
    # HTTP 200 whose JSON is {"code","message","request_id"}: the SDK reads `code` only from
    # HTTP errors and `event:error` frames, so it never reports this one as an error.
    chunks, finals, exc = collect_cosy_stream(
        model=COSY + "-okcode", text=TEXT, voice="longanyang"
    )
    expect(not chunks and not finals and exc is None, "HttpSpeechSynthesizer stream")
    r, rexc = attempt(
        HttpSpeechSynthesizer.call, model=COSY + "-okcode", text=TEXT, voice="longanyang"
    )
    expect(rexc is None and r.status_code == 200 and r.audio_url is None, "cosy non-stream")
    responses, qexc = collect_mmc_stream(model=QWEN + "-okcode", text=TEXT, voice="Cherry")
    q, q2exc = attempt(
        MultiModalConversation.call, model=QWEN + "-okcode", text=TEXT, voice="Cherry"
    )
    return {
        "cosy_stream_results": len(chunks) + len(finals),
        "cosy_stream_exception": type(exc).__name__ if exc else None,
        "cosy_nonstream_status": r.status_code if r else None,
        "cosy_nonstream_code": r.code if r else None,
        "cosy_nonstream_url": r.audio_url if r else None,
        "qwen_stream_responses": len(responses),
        "qwen_stream_exception": type(qexc).__name__ if qexc else None,
        "qwen_nonstream_exception": type(q2exc).__name__ if q2exc else None,
        "qwen_nonstream_status": q.status_code if q else None,
    }


@check
def err_minimax_status():
    responses, exc = collect_mmc_stream(
        model=MINIMAX + "-status", text=TEXT, voice="male-qn-qingse"
    )
    expect(exc is None, f"raised {exc!r}")
    r = responses[0]
    base = r.output["base_resp"]
    expect(base["status_code"] == 1002, f"{base}")
    return {"http_status": r.status_code, "base_resp": base}


@check
def err_unknown_voice():
    q = MultiModalConversation.call(model=QWEN, text=TEXT, voice="Nobody")
    expect(q.status_code == 400 and q.code == "InvalidParameter", f"{q.status_code} {q.code}")
    c = HttpSpeechSynthesizer.call(model="cosyvoice-v3.5-flash", text=TEXT, voice="longanyang")
    expect(c.status_code == 400 and "418" in c.message, f"{c.status_code} {c.message}")
    return {"qwen_message": q.message, "cosy_message": c.message}


@check
def err_drop():
    chunks, finals, exc = collect_cosy_stream(
        model=COSY + "-drop", text=TEXT, voice="longanyang", audio_format="pcm"
    )
    expect(exc is not None and not finals, f"raised {exc!r}")
    return {"chunks_before_drop": len(chunks), "exception": type(exc).__name__}


@check
def observe_multiline_data():
    # Not a failure of the double: the SDK's sync SSE parser hands every `data:` line to
    # json.loads on its own, so an event split over several lines reaches the caller as errors.
    responses, exc = collect_mmc_stream(model=QWEN + "-multiline", text=TEXT, voice="Cherry")
    return {
        "exception": type(exc).__name__ if exc else None,
        "statuses": sorted({r.status_code for r in responses}),
        "codes": sorted({str(r.code) for r in responses}),
        "audio_responses": sum(
            1
            for r in responses
            if r.status_code == 200 and r.output and r.output.audio and r.output.audio.data
        ),
    }


report()
