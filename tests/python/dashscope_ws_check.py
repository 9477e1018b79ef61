#!/usr/bin/env python3
"""Drive the DashScope double's WebSocket side (tests/it/support/dashscope/ws.rs) with the
official `dashscope` Python SDK: `dashscope.audio.tts_v2.SpeechSynthesizer` (run-task) and
`dashscope.audio.qwen_tts_realtime.QwenTtsRealtime`, to prove the double speaks the protocols
the SDK expects.

Run by the integration test `dashscope_ws_double` against a started double, which has scripted
faults for the model names used below (`…-throttled` fails with `Throttling.RateQuota`).

Environment (the SDK reads the first three at import):
  DASHSCOPE_WEBSOCKET_BASE_URL  the double's run-task URL, ws://127.0.0.1:PORT/api-ws/v1/inference
  DASHSCOPE_HTTP_BASE_URL       the double's HTTP base URL
  DASHSCOPE_API_KEY             the key the double expects

Prints one JSON object: {"sdk_version", "checks": {name: observations}, "failures": [...]}, and
exits 1 when a failure was recorded.
"""

import os
import threading

import dashscope
from dashscope.audio.qwen_tts_realtime import (
    AudioFormat as RealtimeFormat,
    QwenTtsRealtime,
    QwenTtsRealtimeCallback,
)
from dashscope.audio.tts_v2 import AudioFormat, ResultCallback, SpeechSynthesizer
from harness import check, expect, report

MS_PER_UNIT = 40
TONE_HZ = 440.0
TEXT = "Hello there. Second sentence!"
COSY = "cosyvoice-v3-flash"
REALTIME = "qwen3-tts-flash-realtime"
WS_URL = os.environ["DASHSCOPE_WEBSOCKET_BASE_URL"]
REALTIME_URL = WS_URL.rstrip("/").removesuffix("/inference") + "/realtime"


def expected_pcm_bytes(text, rate):
    return round(rate * len(text) * MS_PER_UNIT / 1000) * 2


def tone_hz(pcm, rate):
    n = len(pcm) // 2
    s = [int.from_bytes(pcm[2 * i : 2 * i + 2], "little", signed=True) for i in range(n)]
    if len(s) < 2:
        return 0.0
    crossings = sum(1 for a, b in zip(s, s[1:]) if (a < 0) != (b < 0))
    return crossings / 2 / (len(s) / rate)


def close_to(hz, want=TONE_HZ):
    return abs(hz - want) < want * 0.03


class Collect(ResultCallback):
    def __init__(self):
        self.audio = bytearray()
        self.events = []
        self.errors = []
        self.complete = threading.Event()

    def on_data(self, data):
        self.audio.extend(data)

    def on_event(self, message):
        import json

        self.events.append(json.loads(message))

    def on_error(self, message):
        self.errors.append(str(message))
        self.complete.set()

    def on_complete(self):
        self.complete.set()


@check
def cosy_call(obs):
    synth = SpeechSynthesizer(
        model=COSY, voice="longanyang", format=AudioFormat.PCM_16000HZ_MONO_16BIT
    )
    audio = synth.call(TEXT, timeout_millis=10000)
    obs["bytes"] = len(audio)
    obs["hz"] = tone_hz(audio, 16000)
    obs["request_id"] = synth.get_last_request_id()
    expect(len(audio) == expected_pcm_bytes(TEXT, 16000), f"{len(audio)} bytes")
    expect(close_to(obs["hz"]), f"{obs['hz']} Hz")


@check
def cosy_streaming_pieces(obs):
    cb = Collect()
    synth = SpeechSynthesizer(
        model=COSY,
        voice="longanyang",
        format=AudioFormat.PCM_22050HZ_MONO_16BIT,
        callback=cb,
    )
    for piece in ["Hello the", "re. Second sen", "tence!"]:
        synth.streaming_call(piece)
    synth.streaming_complete(complete_timeout_millis=10000)
    kinds = [
        e["payload"]["output"]["type"]
        for e in cb.events
        if e["header"]["event"] == "result-generated"
    ]
    obs["sentence_begins"] = kinds.count("sentence-begin")
    obs["bytes"] = len(cb.audio)
    obs["errors"] = cb.errors
    # Only result-generated events reach on_event; the SDK keeps the last message it read.
    last = synth.get_response() or {}
    obs["last_event"] = last.get("header", {}).get("event")
    obs["characters"] = last.get("payload", {}).get("usage", {}).get("characters")
    expect(obs["sentence_begins"] == 2, f"{kinds}")
    expect(len(cb.audio) == expected_pcm_bytes(TEXT, 22050), f"{len(cb.audio)} bytes")
    expect(close_to(tone_hz(bytes(cb.audio), 22050)), "tone")
    expect(obs["last_event"] == "task-finished", f"{obs['last_event']}")
    expect(obs["characters"] == len(TEXT), f"{obs['characters']}")


@check
def cosy_task_failed(obs):
    synth = SpeechSynthesizer(
        model=COSY + "-throttled",
        voice="longanyang",
        format=AudioFormat.PCM_16000HZ_MONO_16BIT,
    )
    try:
        synth.call(TEXT, timeout_millis=10000)
        expect(False, "no exception")
    except Exception as e:  # noqa: BLE001 - the error is the observation
        obs["class"] = type(e).__name__
        obs["text"] = str(e)
    expect("Throttling.RateQuota" in obs.get("text", ""), f"{obs}")


@check
def cosy_wrong_key(obs):
    key = dashscope.api_key
    dashscope.api_key = "sk-wrong"
    try:
        synth = SpeechSynthesizer(
            model=COSY, voice="longanyang", format=AudioFormat.PCM_16000HZ_MONO_16BIT
        )
        synth.call(TEXT, timeout_millis=10000)
        expect(False, "no exception")
    except Exception as e:  # noqa: BLE001 - the error is the observation
        obs["class"] = type(e).__name__
    finally:
        dashscope.api_key = key


class RealtimeCollect(QwenTtsRealtimeCallback):
    def __init__(self):
        self.types = []
        self.audio = bytearray()
        self.errors = []
        self.characters = 0
        self.finished = threading.Event()
        self.closed = threading.Event()

    def on_event(self, message):
        import base64

        self.types.append(message["type"])
        if message["type"] == "response.audio.delta":
            self.audio.extend(base64.b64decode(message["delta"]))
        elif message["type"] == "response.done":
            self.characters += message["response"]["usage"]["characters"]
        elif message["type"] == "error":
            self.errors.append(message["error"])
            self.finished.set()
        elif message["type"] == "session.finished":
            self.finished.set()

    def on_close(self, code, msg):
        self.closed.set()
        self.finished.set()


def realtime_session(obs, model, mode, commit):
    cb = RealtimeCollect()
    rt = QwenTtsRealtime(model=model, callback=cb, url=REALTIME_URL)
    rt.connect()
    rt.update_session(
        voice="Cherry", response_format=RealtimeFormat.PCM_24000HZ_MONO_16BIT, mode=mode
    )
    for piece in ["Hello the", "re. Second sen", "tence!"]:
        rt.append_text(piece)
    if commit:
        rt.commit()
    rt.finish()
    cb.finished.wait(10)
    cb.closed.wait(5)
    obs["session_id"] = rt.get_session_id()
    obs["first_audio_delay_known"] = rt.get_first_audio_delay() is not None
    obs["bytes"] = len(cb.audio)
    obs["characters"] = cb.characters
    obs["responses"] = cb.types.count("response.done")
    obs["first"] = cb.types[:2]
    obs["last"] = cb.types[-1] if cb.types else None
    obs["errors"] = cb.errors
    obs["closed"] = cb.closed.is_set()
    return cb


@check
def realtime_server_commit(obs):
    cb = realtime_session(obs, REALTIME, "server_commit", False)
    expect(obs["first"] == ["session.created", "session.updated"], f"{cb.types[:3]}")
    expect(obs["last"] == "session.finished", f"{obs['last']}")
    expect(obs["responses"] == 2, f"{obs['responses']} responses")
    expect(len(cb.audio) == expected_pcm_bytes(TEXT, 24000), f"{len(cb.audio)} bytes")
    expect(close_to(tone_hz(bytes(cb.audio), 24000)), "tone")
    expect(obs["characters"] == len(TEXT), f"{obs['characters']}")
    expect(obs["session_id"].startswith("sess_"), f"{obs['session_id']}")
    expect(obs["first_audio_delay_known"], "first audio delay")
    expect(obs["closed"], "the server closes after session.finished")


@check
def realtime_commit(obs):
    cb = realtime_session(obs, REALTIME, "commit", True)
    expect("input_text_buffer.committed" in cb.types, f"{cb.types}")
    expect(obs["responses"] == 1, f"{obs['responses']} responses")
    expect(len(cb.audio) == expected_pcm_bytes(TEXT, 24000), f"{len(cb.audio)} bytes")
    expect(obs["last"] == "session.finished", f"{obs['last']}")


@check
def realtime_error(obs):
    cb = realtime_session(obs, REALTIME + "-throttled", "commit", True)
    expect(
        [e.get("code") for e in cb.errors] == ["Throttling.RateQuota"], f"{cb.errors}"
    )
    expect(len(cb.audio) == 0, "no audio")
    expect(obs["closed"], "the server closes after the error")


report()
