//! The gRPC side of the tests: requests, and what a `Synthesize` or `Speak` stream returned.

use futures::StreamExt;
use herald::{
    audio::{InputEncoding, decode::open_decoder},
    pb::{self, audio_format::Encoding, speech_client::SpeechClient, synthesize_response::Payload},
};
use tonic::transport::Channel;

use super::audio::{f32le_to_f32, patch_wav_sizes, s16_to_f32, wav_samples};

/// Everything one Synthesize call returned.
#[derive(Debug, Default)]
pub struct Collected {
    pub info: Option<pb::AudioInfo>,
    pub chunks: Vec<pb::AudioChunk>,
    pub summary: Option<pb::SynthesisSummary>,
    /// Word timings, over all `words` messages.
    pub words: Vec<pb::WordTiming>,
    /// Order of the payload kinds: 'i', 'a', 'w', 's'.
    pub order: String,
}

impl Collected {
    pub fn bytes(&self) -> Vec<u8> {
        self.chunks
            .iter()
            .flat_map(|c| c.data.iter().copied())
            .collect()
    }
    pub fn info(&self) -> &pb::AudioInfo {
        self.info.as_ref().expect("info")
    }
    pub fn summary(&self) -> &pb::SynthesisSummary {
        self.summary.as_ref().expect("summary")
    }
    pub fn format(&self) -> pb::AudioFormat {
        self.info().format.expect("format")
    }

    /// The audio as interleaved f32, for the encodings a test can decode exactly (PCM, WAV,
    /// G.711) and MP3 (herald's own decoder); a WAV's or an MP3's rate (and a WAV's channels)
    /// must be the format's.
    pub fn samples(&self) -> Vec<f32> {
        let f = self.format();
        let bytes = self.bytes();
        match Encoding::try_from(f.encoding).expect("a known encoding") {
            Encoding::PcmS16le => s16_to_f32(&bytes),
            Encoding::PcmF32le => f32le_to_f32(&bytes),
            Encoding::Wav => {
                let (spec, samples) = wav_samples(patch_wav_sizes(bytes));
                assert_eq!(spec.sample_rate, f.sample_rate_hz);
                assert_eq!(u32::from(spec.channels), f.channels);
                samples
            }
            Encoding::Mulaw => bytes
                .iter()
                .map(|b| f32::from(herald::audio::encode::ulaw_to_linear(*b)) / 32768.0)
                .collect(),
            Encoding::Alaw => bytes
                .iter()
                .map(|b| f32::from(herald::audio::encode::alaw_to_linear(*b)) / 32768.0)
                .collect(),
            Encoding::Mp3 => {
                let mut d =
                    open_decoder(InputEncoding::Mp3, std::io::Cursor::new(bytes)).expect("mp3");
                let mut out = Vec::new();
                while let Some(b) = d.next_buffer().expect("mp3 frame") {
                    assert_eq!(b.spec.sample_rate, f.sample_rate_hz);
                    out.extend(b.samples);
                }
                out
            }
            other => panic!("no decoder for {other:?}"),
        }
    }

    /// The first channel of [`Collected::samples`].
    pub fn mono(&self) -> Vec<f32> {
        let channels = self.format().channels.max(1) as usize;
        self.samples()
            .chunks(channels)
            .map(|frame| frame[0])
            .collect()
    }
}

/// Call Synthesize and collect the whole stream.
pub async fn synthesize(
    client: &mut SpeechClient<Channel>,
    req: pb::SynthesizeRequest,
) -> Result<Collected, tonic::Status> {
    let mut stream = client.synthesize(req).await?.into_inner();
    let mut out = Collected::default();
    while let Some(msg) = stream.next().await {
        match msg?.payload.expect("payload") {
            Payload::Info(i) => {
                out.order.push('i');
                out.info = Some(i);
            }
            Payload::Audio(a) => {
                out.order.push('a');
                out.chunks.push(a);
            }
            Payload::Words(w) => {
                out.order.push('w');
                out.words.extend(w.words);
            }
            Payload::Summary(s) => {
                out.order.push('s');
                out.summary = Some(s);
            }
        }
    }
    Ok(out)
}

/// A request for `text` in `encoding` at `rate` Hz and `channels`.
pub fn request(text: &str, encoding: Encoding, rate: u32, channels: u32) -> pb::SynthesizeRequest {
    pb::SynthesizeRequest {
        text: text.to_owned(),
        format: Some(pb::AudioFormat {
            encoding: encoding as i32,
            sample_rate_hz: rate,
            channels,
        }),
        ..Default::default()
    }
}

/// A request for `text` with `model` and `voice`, as 16 kHz mono s16le.
pub fn pcm16k(model: &str, voice: &str, text: &str) -> pb::SynthesizeRequest {
    pb::SynthesizeRequest {
        model: model.to_owned(),
        voice: voice.to_owned(),
        ..request(text, Encoding::PcmS16le, 16000, 1)
    }
}

// ---- Speak ----

/// A `Speak` request for `text` on the DashScope double's qwen3-tts-flash.
pub fn speak_request(id: &str, text: &str, priority: pb::Priority) -> pb::SpeakRequest {
    pb::SpeakRequest {
        text: text.to_owned(),
        model: "qwen3-tts-flash".to_owned(),
        voice: "Cherry".to_owned(),
        priority: priority as i32,
        id: id.to_owned(),
        ..Default::default()
    }
}

/// A `Speak` stream's events until the final one.
pub async fn speak_events(
    stream: &mut tonic::Streaming<pb::SpeakEvent>,
) -> Vec<pb::speak_event::Event> {
    use pb::speak_event::Event as E;
    let mut out = Vec::new();
    while let Some(ev) = stream.message().await.expect("event") {
        let e = ev.event.expect("event set");
        let last = !matches!(e, E::Queued(_) | E::Started(_));
        out.push(e);
        if last {
            break;
        }
    }
    out
}

/// Read a `Speak` stream up to its STARTED event.
pub async fn until_started(stream: &mut tonic::Streaming<pb::SpeakEvent>) {
    use pb::speak_event::Event as E;
    loop {
        match stream.message().await.unwrap().unwrap().event.unwrap() {
            E::Started(_) => return,
            E::Queued(_) => continue,
            other => panic!("{other:?}"),
        }
    }
}
