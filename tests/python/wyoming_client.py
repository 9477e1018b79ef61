"""herald's Wyoming door through the real `wyoming` package (pinned in .ci/setup).

Usage: wyoming_client.py URI SCENARIO JSON_ARGS
  URI: tcp://HOST:PORT or unix://PATH
  SCENARIO: describe | synthesize | stream | bad_voice
Prints one JSON line: the events seen (type, data) and the PCM of the audio chunks (base64).
"""

import asyncio
import base64
import json
import sys
import time

import wyoming

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncClient
from wyoming.error import Error
from wyoming.info import Describe, Info
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

TIMEOUT = 30


def voice_of(args):
    if "voice" in args:
        return SynthesizeVoice(name=args["voice"])
    if "language" in args:
        return SynthesizeVoice(language=args["language"])
    return None


class Collector:
    def __init__(self):
        self.events = []
        self.pcm = bytearray()

    def add(self, event):
        entry = {"type": event.type}
        if AudioChunk.is_type(event.type):
            chunk = AudioChunk.from_event(event)
            self.pcm.extend(chunk.audio)
            entry["data"] = {
                "rate": chunk.rate,
                "width": chunk.width,
                "channels": chunk.channels,
                "timestamp": chunk.timestamp,
                "bytes": len(chunk.audio),
            }
        elif AudioStart.is_type(event.type):
            s = AudioStart.from_event(event)
            entry["data"] = {"rate": s.rate, "width": s.width, "channels": s.channels}
        elif AudioStop.is_type(event.type):
            entry["data"] = {"timestamp": AudioStop.from_event(event).timestamp}
        elif Error.is_type(event.type):
            e = Error.from_event(event)
            entry["data"] = {"text": e.text, "code": e.code}
        self.events.append(entry)

    async def until(self, client, done):
        while True:
            event = await asyncio.wait_for(client.read_event(), TIMEOUT)
            if event is None:
                raise RuntimeError("the server closed the connection")
            self.add(event)
            if done(event):
                return event

    def result(self, **extra):
        return {
            "events": self.events,
            "pcm": base64.b64encode(bytes(self.pcm)).decode(),
            **extra,
        }


def ends_response(event):
    return AudioStop.is_type(event.type) or Error.is_type(event.type)


async def synthesize(client, text, voice):
    c = Collector()
    await client.write_event(Synthesize(text=text, voice=voice).event())
    await c.until(client, ends_response)
    return c


async def main():
    uri, scenario, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    async with AsyncClient.from_uri(uri) as client:
        if scenario == "describe":
            await client.write_event(Describe().event())
            event = await asyncio.wait_for(client.read_event(), TIMEOUT)
            info = Info.from_event(event)
            tts = [
                {
                    "name": p.name,
                    "installed": p.installed,
                    "version": p.version,
                    "supports_synthesize_streaming": p.supports_synthesize_streaming,
                    "voices": [
                        {
                            "name": v.name,
                            "description": v.description,
                            "languages": v.languages,
                            "speakers": v.speakers,
                        }
                        for v in p.voices
                    ],
                }
                for p in info.tts
            ]
            print(json.dumps({"type": event.type, "tts": tts, "package": wyoming.__version__}))
        elif scenario == "synthesize":
            c = await synthesize(client, args["text"], voice_of(args))
            print(json.dumps(c.result()))
        elif scenario == "bad_voice":
            # An error, then the same connection still serves.
            bad = await synthesize(client, args["text"], SynthesizeVoice(name=args["bad"]))
            good = await synthesize(client, args["text"], voice_of(args))
            print(json.dumps({"bad": bad.result(), "good": good.result()}))
        elif scenario == "stream":
            c = Collector()
            voice = voice_of(args)
            first, rest = args["first"], args["rest"]
            await client.write_event(SynthesizeStart(voice=voice).event())
            sent = time.monotonic()
            await client.write_event(SynthesizeChunk(text=first).event())
            # The first sentence is complete: its audio comes before anything more is sent.
            await c.until(client, lambda e: AudioChunk.is_type(e.type) or Error.is_type(e.type))
            first_audio_ms = (time.monotonic() - sent) * 1000
            before_stop = sum(1 for e in c.events if e["type"] == "audio-chunk")
            for piece in rest:
                await client.write_event(SynthesizeChunk(text=piece).event())
            # The backward-compatible synthesize, which a streaming server ignores.
            await client.write_event(
                Synthesize(text=first + "".join(rest), voice=voice).event()
            )
            await client.write_event(SynthesizeStop().event())
            await c.until(client, lambda e: SynthesizeStopped.is_type(e.type))
            # Nothing more follows: a describe is answered next.
            await client.write_event(Describe().event())
            after = await asyncio.wait_for(client.read_event(), TIMEOUT)
            print(
                json.dumps(
                    c.result(
                        chunks_before_stop=before_stop,
                        first_audio_ms=first_audio_ms,
                        next=after.type,
                    )
                )
            )
        else:
            raise SystemExit(f"unknown scenario {scenario}")


asyncio.run(main())
