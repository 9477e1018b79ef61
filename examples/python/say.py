#!/usr/bin/env python3
"""herald from Python: synthesize text or list voices through the herald.v1 gRPC API.

The stubs are generated from herald's proto/ at first use (grpcio-tools), into
examples/python/_gen/, so this file is all a Python integrator needs besides
`pip install grpcio grpcio-tools`.

    python3 examples/python/say.py --socket /run/herald/herald.sock --voices
    python3 examples/python/say.py --addr 127.0.0.1:50051 --token-file token "Hello" -o hello.wav
    python3 examples/python/say.py --addr herald.lan:50051 --tls-ca ca.pem --token "$TOKEN" \\
        --format opus --rate 48000 "Over TLS" -o hello.opus

The connection settings are herald's own (`herald say --help`): --socket PATH / HERALD_SOCKET,
--addr HOST:PORT / HERALD_ADDR, --token / --token-file / HERALD_TOKEN (sent as
"authorization: Bearer ..."), --tls-ca FILE / HERALD_TLS_CA (TLS, trusting that CA).

It prints one JSON line to stdout describing what happened (info, summary or voices). A WAV
file gets its RIFF and data sizes patched at the end (the stream's header says "unknown").
Errors are one line on stderr, "say.py: CODE: message", and exit status 1.
"""

import argparse
import json
import os
import pathlib
import struct
import sys

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
GEN = pathlib.Path(os.environ.get("HERALD_PY_GEN", HERE / "_gen"))

# --format name -> AudioFormat.Encoding name. The names of `herald say --format`; the proto's
# names of the raw encodings are accepted too.
FORMATS = {
    "wav": "WAV",
    "pcm": "PCM_S16LE",
    "f32": "PCM_F32LE",
    "mulaw": "MULAW",
    "alaw": "ALAW",
    "mp3": "MP3",
    "opus": "OGG_OPUS",
    "flac": "FLAC",
    "pcm_s16le": "PCM_S16LE",
    "pcm_f32le": "PCM_F32LE",
}


class Failure(Exception):
    """An error to print as "say.py: CODE: message"."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


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
            raise Failure("PROTOC", f"protoc failed with {rc}")
    sys.path.insert(0, str(GEN))
    from herald.v1 import herald_pb2, herald_pb2_grpc  # noqa: E402

    return herald_pb2, herald_pb2_grpc


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    conn = ap.add_argument_group("connection (flags, else HERALD_* variables)")
    where = conn.add_mutually_exclusive_group()
    where.add_argument("--addr", help="HOST:PORT of a TCP listener [env: HERALD_ADDR]")
    where.add_argument("--socket", help="path of herald's unix socket [env: HERALD_SOCKET]")
    token = conn.add_mutually_exclusive_group()
    token.add_argument("--token", help="bearer token of a TCP listener [env: HERALD_TOKEN]")
    token.add_argument("--token-file", help="file holding the bearer token")
    conn.add_argument("--tls-ca", help="TLS over TCP, trusting this PEM CA [env: HERALD_TLS_CA]")
    ap.add_argument("--voices", action="store_true", help="list voices instead of synthesizing")
    ap.add_argument("text", nargs="?", help="text to speak")
    ap.add_argument("-o", "--output", help="output file (required to synthesize)")
    ap.add_argument("--voice", default="")
    ap.add_argument("--model", default="")
    ap.add_argument("--format", default="wav", choices=list(FORMATS))
    ap.add_argument("--rate", type=int, default=0, help="sample rate in Hz (0 = native)")
    ap.add_argument("--channels", type=int, default=0)
    ap.add_argument("--bitrate", type=int, default=0, help="bits per second (mp3, opus)")
    ap.add_argument("--bits", type=int, default=0, help="bits per sample (flac: 16 or 24)")
    ap.add_argument("--timeout", type=float, default=60.0, help="deadline in seconds")
    args = ap.parse_args()
    if not args.voices and (not args.text or not args.output):
        ap.error("text and -o/--output are required to synthesize")
    return args


def settings(args):
    """(gRPC target, TLS CA PEM or None, token or None): flags, else variables."""
    addr, socket = args.addr, args.socket
    if not addr and not socket:
        addr, socket = os.environ.get("HERALD_ADDR"), os.environ.get("HERALD_SOCKET")
        if addr and socket:
            raise Failure("USAGE", "both HERALD_SOCKET and HERALD_ADDR are set: choose with --socket or --addr")
    if not addr and not socket:
        raise Failure("USAGE", "no daemon given: --socket PATH (HERALD_SOCKET) or --addr HOST:PORT (HERALD_ADDR)")
    token = args.token
    if token is None and args.token_file:
        try:
            token = pathlib.Path(args.token_file).read_text().strip()
        except OSError as e:
            raise Failure("USAGE", f"cannot read the token file {args.token_file}: {e.strerror}")
    if token is None:
        token = os.environ.get("HERALD_TOKEN")
    ca_file = args.tls_ca or (os.environ.get("HERALD_TLS_CA") if addr else None)
    ca = None
    if ca_file:
        if not addr:
            raise Failure("USAGE", "--tls-ca applies to TCP (--addr HOST:PORT)")
        try:
            ca = pathlib.Path(ca_file).read_bytes()
        except OSError as e:
            raise Failure("USAGE", f"cannot read the TLS CA {ca_file}: {e.strerror}")
    return addr or f"unix://{os.path.abspath(socket)}", ca, token


def patch_wav(path):
    """Replace the streamed header's "unknown" RIFF and data sizes with the file's."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size < 44:
            return
        f.seek(0)
        head = f.read(44)
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE" or head[36:40] != b"data":
            return
        f.seek(4)
        f.write(struct.pack("<I", size - 8))
        f.seek(40)
        f.write(struct.pack("<I", size - 44))


def run(args):
    target, ca, token = settings(args)
    pb, rpc = load_stubs()
    import grpc

    metadata = [("authorization", f"Bearer {token}")] if token else []
    if ca is not None:
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca))
    else:
        channel = grpc.insecure_channel(target)
    try:
        with channel:
            stub = rpc.SpeechStub(channel)
            if args.voices:
                resp = stub.ListVoices(pb.ListVoicesRequest(model=args.model), timeout=args.timeout, metadata=metadata)
                print(json.dumps({"voices": [
                    {"name": v.name, "model": v.model, "engine": v.engine,
                     "languages": list(v.languages), "native_sample_rate_hz": v.native_sample_rate_hz}
                    for v in resp.voices
                ]}))
                return
            encoding = pb.AudioFormat.Encoding.Value(FORMATS[args.format])
            req = pb.SynthesizeRequest(
                text=args.text, voice=args.voice, model=args.model,
                format=pb.AudioFormat(encoding=encoding, sample_rate_hz=args.rate, channels=args.channels),
                bitrate_bps=args.bitrate, bits_per_sample=args.bits,
            )
            info = summary = None
            chunks = 0
            with open(args.output, "wb") as out:
                for msg in stub.Synthesize(req, timeout=args.timeout, metadata=metadata):
                    kind = msg.WhichOneof("payload")
                    if kind == "info":
                        info = msg.info
                    elif kind == "audio":
                        out.write(msg.audio.data)
                        chunks += 1
                    elif kind == "summary":
                        summary = msg.summary
    except grpc.RpcError as e:
        raise Failure(e.code().name, e.details() or "")
    if info is None or summary is None:
        raise Failure("INCOMPLETE", "the stream ended without a summary")
    if encoding == pb.AudioFormat.WAV:
        patch_wav(args.output)
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


def main():
    args = parse_args()
    try:
        run(args)
    except Failure as e:
        print(f"say.py: {e.code}: {e.message}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"say.py: OS_ERROR: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("say.py: CANCELLED: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
