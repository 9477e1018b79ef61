#!/usr/bin/env python3
"""Drive the DashScope double's custom-voice endpoint (tests/it/support/dashscope/custom.rs)
with the official `dashscope` Python SDK: the 1.x `VoiceEnrollmentService` (voice-enrollment)
and the 2.0 `Client().audio.voices` (voice-enrollment) and `Client().audio.voice_design`
(qwen-voice-design) resources. The SDK has no class for `qwen-voice-enrollment`
(Qwen3-TTS-VC); that surface is checked over raw HTTP by the integration test `voices_double`.

Run by the integration test `voices_double` (tests/it/voices_double.rs) against a started
double with one scripted fault: the first `qwen-voice-design` call answers 400
`Throttling.AllocationQuota`.

Environment: DASHSCOPE_HTTP_BASE_URL, DASHSCOPE_API_KEY (read by the SDK at import).

Prints one JSON object: {"sdk_version", "checks": {name: observations}, "failures": [...]}, and
exits 1 when a failure was recorded.
"""

import base64
import io
import os
import wave
import warnings

import dashscope
from dashscope.audio.tts_v2 import VoiceEnrollmentException, VoiceEnrollmentService
from harness import check, expect, raises, report

BASE = os.environ["DASHSCOPE_HTTP_BASE_URL"]
KEY = os.environ["DASHSCOPE_API_KEY"]


def wav_b64(seconds, amp, rate=16000):
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        frames = bytearray()
        for i in range(int(rate * seconds)):
            v = int(amp * 32767 * (1 if (i // 40) % 2 else -1))
            frames += int(v).to_bytes(2, "little", signed=True)
        w.writeframes(bytes(frames))
    return base64.b64encode(buf.getvalue()).decode()


def enrollment_1x(obs):
    svc = VoiceEnrollmentService()
    vid = svc.create_voice(
        target_model="cosyvoice-v3-flash",
        prefix="sdkclone",
        url="https://example.invalid/sample.wav",
        language_hints=["en"],
    )
    obs["voice_id"] = vid
    expect(vid.startswith("cosyvoice-v3-flash-sdkclone-"), f"voice id {vid}")
    first = svc.query_voice(vid)
    second = svc.query_voice(vid)
    obs["statuses"] = [first.get("status"), second.get("status")]
    obs["query_keys"] = sorted(first.keys())
    listed = svc.list_voices(prefix="sdkclone", page_index=0, page_size=10)
    obs["listed"] = [v["voice_id"] for v in listed]
    svc.update_voice(vid, "https://example.invalid/other.wav")
    obs["status_after_update"] = svc.query_voice(vid).get("status")
    svc.delete_voice(vid)
    try:
        svc.query_voice(vid)
        expect(False, "query after delete succeeded")
    except VoiceEnrollmentException as e:
        obs["after_delete"] = {"status": e._status_code, "code": e._code}
    try:
        svc.create_voice(
            target_model="cosyvoice-v3-flash",
            prefix="silent",
            url="data:audio/wav;base64," + wav_b64(6, 0.0),
        )
        expect(False, "a silent sample was accepted")
    except VoiceEnrollmentException as e:
        obs["silent"] = {"status": e._status_code, "code": e._code, "message": e._error_message}
    ok = svc.create_voice(
        target_model="cosyvoice-v3.5-plus",
        prefix="datauri",
        url="data:audio/wav;base64," + wav_b64(6, 0.5),
    )
    obs["data_uri_voice"] = ok
    try:
        VoiceEnrollmentService(api_key="sk-wrong").list_voices()
        expect(False, "a wrong key was accepted")
    except VoiceEnrollmentException as e:
        obs["bad_key"] = {"status": e._status_code, "code": e._code}


def client():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = dashscope.Client(api_key=KEY, base_url=BASE, max_retries=0)
        return c, c.audio


def voices_2x(obs):
    _, audio = client()
    v = audio.voices.create(
        target_model="qwen-audio-3.0-tts-flash", prefix="sdktwo", url="https://example.invalid/a.wav"
    )
    obs["voice_id"] = v.voice_id
    expect(v.voice_id.startswith("qwen-audio-3.0-tts-flash-sdktwo-"), f"id {v.voice_id}")
    obs["statuses"] = [audio.voices.get(v.voice_id).status, audio.voices.get(v.voice_id).status]
    listed = audio.voices.list(prefix="sdktwo")
    obs["listed"] = [x["voice_id"] for x in listed.voices]
    audio.voices.delete(v.voice_id)
    obs["after_delete"] = raises("get after delete succeeded", audio.voices.get, v.voice_id)


def voice_design_2x(obs):
    _, audio = client()
    args = dict(
        target_model="qwen3-tts-vd-2026-01-26",
        voice_prompt="warm, calm, middle-aged female, slightly slow",
        preview_text="Welcome to the museum.",
        preferred_name="sdk_vd",
        language="en",
        parameters={"sample_rate": 24000, "response_format": "wav"},
    )
    obs["quota"] = raises(
        "the scripted quota error did not come", audio.voice_design.create, **args
    )
    d = audio.voice_design.create(**args)
    obs["voice"] = d.voice
    obs["target_model"] = d.target_model
    expect(d.voice.startswith("qwen-tts-vd-sdk_vd-voice-"), f"voice {d.voice}")
    obs["preview_format"] = d.preview_audio.get("response_format")
    obs["preview_rate"] = d.preview_audio.get("sample_rate")
    obs["preview_b64"] = d.preview_audio.get("data")
    listed = audio.voice_design.list()
    obs["listed"] = [x["voice"] for x in listed.voices]
    got = audio.voice_design.get(d.voice)
    obs["got_voice"] = got.voice
    obs["got_language"] = got.language
    audio.voice_design.delete(d.voice)
    obs["after_delete"] = raises("get after delete succeeded", audio.voice_design.get, d.voice)


for fn in (enrollment_1x, voices_2x, voice_design_2x):
    check(fn)

report()
