"""A Python client streaming text to herald's SynthesizeStream, as an LLM integration would:
grpcio, stubs generated from proto/ by examples/python/say.py, a request iterator that yields
the config, then text pieces cut mid-word, and waits for the first audio before it yields the
rest of the text.

    python tests/python/stream_text.py SOCKET

Prints one JSON object: what came back (the info's engine and format, audio bytes, the
summary's sentences, whether audio came before the last piece was sent); exits 1 on a gRPC
error (printed as JSON too).
"""

import json
import pathlib
import sys
import threading

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "examples" / "python"))

import grpc  # noqa: E402
from say import load_stubs  # noqa: E402

TIMEOUT = 60.0
FIRST = "The first sentence is here. The sec"
REST = ["ond one fol", "lows it, and then", " a third? Yes."]


def main():
    pb, pb_grpc = load_stubs()
    socket = sys.argv[1]
    audio_seen = threading.Event()
    state = {"audio_before_last_piece": False}

    def requests():
        yield pb.SynthesizeStreamRequest(
            config=pb.SynthesizeRequest(
                model="espeak-ng",
                format=pb.AudioFormat(encoding=pb.AudioFormat.PCM_S16LE, sample_rate_hz=16000),
            )
        )
        for i in range(0, len(FIRST), 4):
            yield pb.SynthesizeStreamRequest(text=FIRST[i:i + 4])
        # The rest only once audio has come back: the first sentence was spoken early.
        state["audio_before_last_piece"] = audio_seen.wait(TIMEOUT)
        for piece in REST:
            yield pb.SynthesizeStreamRequest(text=piece)
        yield pb.SynthesizeStreamRequest(flush=pb.Flush())

    with grpc.insecure_channel(f"unix://{socket}") as channel:
        stub = pb_grpc.SpeechStub(channel)
        out = {"audio_bytes": 0, "order": ""}
        try:
            for response in stub.SynthesizeStream(requests(), timeout=TIMEOUT):
                kind = response.WhichOneof("payload")
                out["order"] += kind[0]
                if kind == "info":
                    out["engine"] = response.info.engine
                    out["rate"] = response.info.format.sample_rate_hz
                elif kind == "audio":
                    out["audio_bytes"] += len(response.audio.data)
                    audio_seen.set()
                elif kind == "summary":
                    s = response.summary
                    out["samples"] = s.samples
                    out["sentences"] = [
                        {"text": x.text, "engine": x.engine, "begin_ms": x.begin_ms,
                         "duration_ms": x.duration_ms}
                        for x in s.sentences
                    ]
        except grpc.RpcError as e:
            print(json.dumps({"error": e.code().name, "message": e.details()}))
            return 1
        out["audio_before_last_piece"] = state["audio_before_last_piece"]
        print(json.dumps(out))
        return 0


if __name__ == "__main__":
    sys.exit(main())
