#!/usr/bin/env python3
"""herald from Python: synthesize text or list voices through the herald.v1 gRPC API.

The stubs are generated from herald's proto/ at first use (grpcio-tools), into
examples/python/_gen/, so this file is all a Python integrator needs besides
`pip install grpcio grpcio-tools`.

    python3 examples/python/say.py --addr 127.0.0.1:50051 "Hello from Python" -o hello.wav
    python3 examples/python/say.py --socket /run/herald/herald.sock --voices
    python3 examples/python/say.py --addr 127.0.0.1:50051 --format pcm_f32le --rate 48000 \
        --channels 2 "Stereo" -o stereo.f32

It prints one JSON line to stdout describing what happened (info, summary or voices).
"""

import argparse
import json
import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
GEN = pathlib.Path(os.environ.get("HERALD_PY_GEN", HERE / "_gen"))


def load_stubs():
    """Generate (if needed) and import the herald.v1 stubs."""
    proto = PROTO_ROOT / "herald" / "v1" / "herald.proto"
    target = GEN / "herald" / "v1" / "herald_pb2.py"
    if not target.exists() or target.stat().st_mtime < proto.stat().st_mtime:
        from grpc_tools import protoc

        GEN.mkdir(parents=True, exist_ok=True)
        rc = protoc.main([
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={GEN}",
            f"--grpc_python_out={GEN}",
            str(proto),
        ])
        if rc != 0:
            sys.exit(f"protoc failed with {rc}")
    sys.path.insert(0, str(GEN))
    from herald.v1 import herald_pb2, herald_pb2_grpc  # noqa: E402

    return herald_pb2, herald_pb2_grpc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--addr", help="HOST:PORT of a TCP listener")
    where.add_argument("--socket", help="path of herald's unix socket")
    ap.add_argument("--voices", action="store_true", help="list voices instead of synthesizing")
    ap.add_argument("text", nargs="?", help="text to speak")
    ap.add_argument("-o", "--output", help="output file (default: stdout is not used; required)")
    ap.add_argument("--voice", default="")
    ap.add_argument("--model", default="")
    ap.add_argument("--format", default="wav",
                    choices=["pcm_s16le", "pcm_f32le", "wav", "mulaw", "alaw"])
    ap.add_argument("--rate", type=int, default=0, help="sample rate in Hz (0 = native)")
    ap.add_argument("--channels", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=60.0, help="deadline in seconds")
    args = ap.parse_args()

    pb, rpc = load_stubs()
    import grpc

    target = args.addr or f"unix://{os.path.abspath(args.socket)}"
    with grpc.insecure_channel(target) as channel:
        stub = rpc.SpeechStub(channel)
        if args.voices:
            resp = stub.ListVoices(pb.ListVoicesRequest(model=args.model), timeout=args.timeout)
            print(json.dumps({"voices": [
                {"name": v.name, "model": v.model, "engine": v.engine,
                 "languages": list(v.languages), "native_sample_rate_hz": v.native_sample_rate_hz}
                for v in resp.voices
            ]}))
            return 0
        if not args.text or not args.output:
            ap.error("text and -o/--output are required to synthesize")
        encoding = pb.AudioFormat.Encoding.Value(args.format.upper())
        req = pb.SynthesizeRequest(
            text=args.text, voice=args.voice, model=args.model,
            format=pb.AudioFormat(encoding=encoding, sample_rate_hz=args.rate, channels=args.channels),
        )
        info = summary = None
        chunks = 0
        try:
            with open(args.output, "wb") as out:
                for msg in stub.Synthesize(req, timeout=args.timeout):
                    kind = msg.WhichOneof("payload")
                    if kind == "info":
                        info = msg.info
                    elif kind == "audio":
                        out.write(msg.audio.data)
                        chunks += 1
                    elif kind == "summary":
                        summary = msg.summary
        except grpc.RpcError as e:
            print(json.dumps({"error": {"code": e.code().name, "message": e.details()}}))
            return 1
        if info is None or summary is None:
            print(json.dumps({"error": {"code": "INCOMPLETE", "message": "stream ended early"}}))
            return 1
        print(json.dumps({
            "info": {
                "encoding": pb.AudioFormat.Encoding.Name(info.format.encoding),
                "sample_rate_hz": info.format.sample_rate_hz,
                "channels": info.format.channels,
                "model": info.model, "voice": info.voice, "engine": info.engine,
                "request_id": info.request_id,
            },
            "summary": {
                "samples": summary.samples, "duration_ms": summary.duration_ms,
                "bytes": summary.bytes, "characters": summary.characters,
                "time_to_first_audio_us": summary.time_to_first_audio_us,
            },
            "chunks": chunks,
        }))
        return 0


if __name__ == "__main__":
    sys.exit(main())
