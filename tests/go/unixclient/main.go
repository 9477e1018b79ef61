// Command unixclient is a grpc-go client of herald that dials its unix socket the way grpcurl
// (every release up to v1.8.9) dials `grpcurl -unix -plaintext PATH`: the socket path itself is
// the dial target, reached through a custom unix dialer and the passthrough resolver, so
// grpc-go sends the path as the HTTP/2 :authority. tests/it/go_client.rs builds and runs it.
//
// It checks health (grpc.health.v1.Health/Check), lists services and describes herald.v1.Speech
// through server reflection (v1alpha, as grpcurl does), then calls herald.v1.Speech/Synthesize
// with a request encoded by hand (no generated herald stubs: building them needs protoc), writes
// the audio to -o, and prints one JSON line describing what it saw. Any failure exits 1 with the
// gRPC error on stderr.
//
// It builds with nothing but Debian's golang-go and golang-google-grpc-dev, in GOPATH mode:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o unixclient ./tests/go/unixclient
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/golang/protobuf/proto"
	descriptor "github.com/golang/protobuf/protoc-gen-go/descriptor"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health/grpc_health_v1"
	rpb "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
)

// report is the JSON line printed on success.
type report struct {
	// Target is the dial target: the socket path, which grpc-go also sends as :authority.
	Target string `json:"target"`
	// Health is the status grpc.health.v1.Health/Check returned for the server ("").
	Health string `json:"health"`
	// Services are the names reflection listed.
	Services []string `json:"services"`
	// SynthesizeInput is the request type reflection gives for herald.v1.Speech/Synthesize.
	SynthesizeInput string `json:"synthesize_input"`
	// Engine and SampleRateHz come from the stream's AudioInfo.
	Engine       string `json:"engine"`
	SampleRateHz uint64 `json:"sample_rate_hz"`
	// Chunks and AudioBytes count the AudioChunk messages and their data.
	Chunks     int `json:"chunks"`
	AudioBytes int `json:"audio_bytes"`
	// SummarySamples and SummaryBytes come from the stream's SynthesisSummary.
	SummarySamples uint64 `json:"summary_samples"`
	SummaryBytes   uint64 `json:"summary_bytes"`
}

func main() {
	socket := flag.String("socket", "", "path of herald's unix socket")
	text := flag.String("text", "Hello from Go.", "text to synthesize")
	rate := flag.Uint("rate", 16000, "sample rate of the WAV to request")
	out := flag.String("o", "", "file to write the audio to")
	flag.Parse()
	if *socket == "" || *out == "" {
		fmt.Fprintln(os.Stderr, "usage: unixclient -socket PATH -o OUT.wav [-text TEXT] [-rate HZ]")
		os.Exit(2)
	}
	if err := run(*socket, *text, uint64(*rate), *out); err != nil {
		fmt.Fprintln(os.Stderr, "unixclient:", err)
		os.Exit(1)
	}
}

func run(socket, text string, rate uint64, out string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cc, err := dial(ctx, socket)
	if err != nil {
		return fmt.Errorf("dial %s: %w", socket, err)
	}
	defer cc.Close()
	rep := report{Target: cc.Target()}

	health, err := grpc_health_v1.NewHealthClient(cc).Check(ctx, &grpc_health_v1.HealthCheckRequest{})
	if err != nil {
		return fmt.Errorf("grpc.health.v1.Health/Check: %w", err)
	}
	rep.Health = health.GetStatus().String()

	if rep.Services, rep.SynthesizeInput, err = reflect(ctx, cc); err != nil {
		return fmt.Errorf("reflection: %w", err)
	}
	if err := synthesize(ctx, cc, text, rate, out, &rep); err != nil {
		return fmt.Errorf("herald.v1.Speech/Synthesize: %w", err)
	}
	line, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	fmt.Println(string(line))
	return nil
}

// dial connects as grpcurl v1.8.x's BlockingDial does for `-unix -plaintext`: the raw path is
// the target, a context dialer opens the unix socket, no authority is set.
func dial(ctx context.Context, socket string) (*grpc.ClientConn, error) {
	dialer := func(ctx context.Context, address string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", address)
	}
	return grpc.DialContext(ctx, socket,
		grpc.FailOnNonTempDialError(true),
		grpc.WithInsecure(),
		grpc.WithBlock(),
		grpc.WithContextDialer(dialer),
	)
}

// reflect lists the services and finds Synthesize's input type in the file that declares
// herald.v1.Speech, as `grpcurl list` and `grpcurl describe` do.
func reflect(ctx context.Context, cc *grpc.ClientConn) ([]string, string, error) {
	stream, err := rpb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err != nil {
		return nil, "", err
	}
	defer stream.CloseSend()
	ask := func(req *rpb.ServerReflectionRequest) (*rpb.ServerReflectionResponse, error) {
		if err := stream.Send(req); err != nil {
			return nil, err
		}
		resp, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		if e := resp.GetErrorResponse(); e != nil {
			return nil, fmt.Errorf("code %d: %s", e.ErrorCode, e.ErrorMessage)
		}
		return resp, nil
	}

	resp, err := ask(&rpb.ServerReflectionRequest{
		MessageRequest: &rpb.ServerReflectionRequest_ListServices{ListServices: ""},
	})
	if err != nil {
		return nil, "", fmt.Errorf("list services: %w", err)
	}
	var services []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		services = append(services, s.GetName())
	}

	resp, err = ask(&rpb.ServerReflectionRequest{
		MessageRequest: &rpb.ServerReflectionRequest_FileContainingSymbol{
			FileContainingSymbol: "herald.v1.Speech",
		},
	})
	if err != nil {
		return nil, "", fmt.Errorf("file containing herald.v1.Speech: %w", err)
	}
	for _, raw := range resp.GetFileDescriptorResponse().GetFileDescriptorProto() {
		var file descriptor.FileDescriptorProto
		if err := proto.Unmarshal(raw, &file); err != nil {
			return nil, "", fmt.Errorf("a file descriptor: %w", err)
		}
		if file.GetPackage() != "herald.v1" {
			continue
		}
		for _, svc := range file.GetService() {
			for _, m := range svc.GetMethod() {
				if svc.GetName() == "Speech" && m.GetName() == "Synthesize" {
					return services, m.GetInputType(), nil
				}
			}
		}
	}
	return nil, "", errors.New("no herald.v1.Speech/Synthesize in the descriptors reflection sent")
}

// rawCodec passes already encoded protobuf messages through, so the call needs no stubs.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// synthesize streams Synthesize{text, format: WAV at rate, mono} into out.
func synthesize(ctx context.Context, cc *grpc.ClientConn, text string, rate uint64, out string, rep *report) error {
	// herald.v1.AudioFormat{encoding = 1: WAV (3), sample_rate_hz = 2, channels = 3}
	var format []byte
	format = appendVarintField(format, 1, 3)
	format = appendVarintField(format, 2, rate)
	format = appendVarintField(format, 3, 1)
	// herald.v1.SynthesizeRequest{text = 1, format = 9}
	var req []byte
	req = appendBytesField(req, 1, []byte(text))
	req = appendBytesField(req, 9, format)

	desc := &grpc.StreamDesc{StreamName: "Synthesize", ServerStreams: true}
	stream, err := cc.NewStream(ctx, desc, "/herald.v1.Speech/Synthesize", grpc.ForceCodec(rawCodec{}))
	if err != nil {
		return err
	}
	if err := stream.SendMsg(&req); err != nil {
		return err
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	file, err := os.Create(out)
	if err != nil {
		return err
	}
	defer file.Close()
	sawInfo, sawSummary := false, false
	for {
		var msg []byte
		err := stream.RecvMsg(&msg)
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		// herald.v1.SynthesizeResponse{oneof payload: info = 1, audio = 2, summary = 3, words = 4}
		fields, err := parse(msg)
		if err != nil {
			return fmt.Errorf("a response: %w", err)
		}
		for _, f := range fields {
			switch f.num {
			case 1:
				sawInfo = true
				info, err := parse(f.data)
				if err != nil {
					return fmt.Errorf("AudioInfo: %w", err)
				}
				for _, g := range info {
					switch g.num {
					case 1: // format
						af, err := parse(g.data)
						if err != nil {
							return fmt.Errorf("AudioFormat: %w", err)
						}
						for _, h := range af {
							if h.num == 2 {
								rep.SampleRateHz = h.varint
							}
						}
					case 4: // engine
						rep.Engine = string(g.data)
					}
				}
			case 2:
				chunk, err := parse(f.data)
				if err != nil {
					return fmt.Errorf("AudioChunk: %w", err)
				}
				for _, g := range chunk {
					if g.num == 1 { // data
						if _, err := file.Write(g.data); err != nil {
							return err
						}
						rep.AudioBytes += len(g.data)
					}
				}
				rep.Chunks++
			case 3:
				sawSummary = true
				summary, err := parse(f.data)
				if err != nil {
					return fmt.Errorf("SynthesisSummary: %w", err)
				}
				for _, g := range summary {
					switch g.num {
					case 1:
						rep.SummarySamples = g.varint
					case 8:
						rep.SummaryBytes = g.varint
					}
				}
			}
		}
	}
	if !sawInfo || !sawSummary {
		return errors.New("the stream ended without its AudioInfo or its SynthesisSummary")
	}
	return file.Close()
}

// === protobuf wire format, the little of it this client needs ===

func appendVarintField(b []byte, num int, v uint64) []byte {
	b = binary.AppendUvarint(b, uint64(num)<<3|0)
	return binary.AppendUvarint(b, v)
}

func appendBytesField(b []byte, num int, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(num)<<3|2)
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

// field is one decoded field: a varint's value, or a length-delimited field's bytes.
type field struct {
	num    int
	varint uint64
	data   []byte
}

func parse(b []byte) ([]field, error) {
	var fields []field
	for len(b) > 0 {
		key, n := binary.Uvarint(b)
		if n <= 0 {
			return nil, errors.New("a bad field key")
		}
		b = b[n:]
		f := field{num: int(key >> 3)}
		switch key & 7 {
		case 0:
			v, n := binary.Uvarint(b)
			if n <= 0 {
				return nil, errors.New("a bad varint")
			}
			f.varint, b = v, b[n:]
		case 1:
			if len(b) < 8 {
				return nil, errors.New("a short fixed64")
			}
			b = b[8:]
		case 2:
			l, n := binary.Uvarint(b)
			if n <= 0 || uint64(len(b)-n) < l {
				return nil, errors.New("a bad length")
			}
			f.data, b = b[n:n+int(l)], b[n+int(l):]
		case 5:
			if len(b) < 4 {
				return nil, errors.New("a short fixed32")
			}
			b = b[4:]
		default:
			return nil, fmt.Errorf("wire type %d", key&7)
		}
		fields = append(fields, f)
	}
	return fields, nil
}
