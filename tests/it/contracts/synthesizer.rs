//! The `Synthesizer` contract: what every engine promises the pipeline, checked on each
//! implementation the library exposes.
//!
//! | property | espeak-ng | cosyvoice, qwen-tts, minimax (double) | cache replay |
//! |---|---|---|---|
//! | [`yields_audio_then_one_finished_last`] | ✓ | ✓ | ✓ |
//! | [`its_audio_decodes_at_one_spec`] | ✓ | ✓ | ✓ |
//! | [`lists_only_voices_it_serves`] | ✓ | ✓ | (no engine of its own) |
//! | [`refuses_an_unknown_voice_before_any_audio`] | ✓ | ✓ | (replays what was stored) |
//! | [`refuses_an_option_its_model_does_not_take`] | ✓ | ✓ | (ditto) |
//! | [`dropping_the_stream_stops_the_work`] | ✓ (own process) | ✓ | (nothing runs) |

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use futures::StreamExt;
use herald::{
    audio::{AudioSpec, InputEncoding, decode::open_decoder},
    cache::{
        self, canonical_pcm,
        store::{Entry, EntryMeta},
    },
    engine::{
        EngineError, SynthEvent, SynthStream, SynthesisRequest, Synthesizer, VoiceInfo,
        dashscope::{Client, Settings, Tuning},
        espeak::{Espeak, EspeakConfig},
    },
};
use secrecy::SecretString;

use crate::support::{
    API_KEY, children_named,
    dashscope::{DashScopeDouble, Options},
    process::own_process,
};

/// What the properties need of one implementation.
struct Subject {
    engine: Arc<dyn Synthesizer>,
    /// A request it serves (short), for a text.
    request: fn(&str) -> SynthesisRequest,
    /// A voice its model does not have.
    unknown_voice: &'static str,
    /// An option its model does not take (set on a request), and the field that names it.
    unsupported: (fn(&mut SynthesisRequest), &'static str),
    /// How the work behind a stream is seen to stop.
    work: Work,
    /// The double the engine calls, kept running.
    double: Option<DashScopeDouble>,
}

/// Where a stream's work runs.
enum Work {
    /// An `espeak-ng` child of this process.
    Child(&'static str),
    /// An upstream request to the double.
    Upstream,
}

const TEXT: &str = "The quick brown fox jumps over the lazy dog.";

/// The events of a stream, in order, until its end; the first error fails the test.
async fn collect(mut stream: SynthStream) -> Vec<SynthEvent> {
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        events.push(event.expect("no error in the stream"));
    }
    events
}

async fn start(engine: &dyn Synthesizer, req: SynthesisRequest) -> SynthStream {
    engine
        .synthesize(req)
        .await
        .expect("the engine accepts the request")
}

// ---- the properties ----

/// A request that succeeds yields audio (all of one encoding, none of it empty), then exactly
/// one `Finished`, the last event; word timings, if any, come before it.
async fn yields_audio_then_one_finished_last(s: &Subject) {
    let events = collect(start(&*s.engine, (s.request)(TEXT)).await).await;
    let audio: Vec<InputEncoding> = events
        .iter()
        .filter_map(|e| match e {
            SynthEvent::Audio { encoding, data } => {
                assert!(!data.is_empty(), "an empty audio event");
                Some(*encoding)
            }
            _ => None,
        })
        .collect();
    assert!(!audio.is_empty(), "no audio: {events:?}");
    assert!(
        audio.iter().all(|e| *e == audio[0]),
        "one encoding per stream: {audio:?}"
    );
    let finished = events
        .iter()
        .filter(|e| matches!(e, SynthEvent::Finished { .. }))
        .count();
    assert_eq!(finished, 1, "one Finished");
    assert!(
        matches!(events.last(), Some(SynthEvent::Finished { .. })),
        "Finished is the last event"
    );
}

/// The audio bytes of a stream, split anywhere, decode as one stream to sound at one spec,
/// about as long as the text takes to say (0.5 to 10 s here).
async fn its_audio_decodes_at_one_spec(s: &Subject) {
    let events = collect(start(&*s.engine, (s.request)(TEXT)).await).await;
    let mut encoding = None;
    let mut bytes = Vec::new();
    for e in &events {
        if let SynthEvent::Audio {
            encoding: enc,
            data,
        } = e
        {
            encoding.get_or_insert(*enc);
            bytes.extend_from_slice(data);
        }
    }
    let encoding = encoding.expect("audio");
    let mut decoder =
        open_decoder(encoding, std::io::Cursor::new(bytes)).expect("a decoder for the stream");
    let (mut spec, mut frames, mut peak) = (None::<AudioSpec>, 0usize, 0f32);
    while let Some(buffer) = decoder.next_buffer().expect("decodes") {
        assert_eq!(*spec.get_or_insert(buffer.spec), buffer.spec, "one spec");
        frames += buffer.samples.len() / usize::from(buffer.spec.channels);
        peak = buffer.samples.iter().fold(peak, |m, x| m.max(x.abs()));
    }
    let spec = spec.expect("decoded audio");
    let seconds = frames as f64 / f64::from(spec.sample_rate);
    assert!((0.5..10.0).contains(&seconds), "{seconds} s at {spec:?}");
    assert!(peak > 0.05, "sound, not silence: peak {peak}");
}

/// Every voice it lists belongs to a model it serves, passes its own voice check and has the
/// native rate it reports for it; each such model's default voice passes too; a model nobody
/// serves is not its.
async fn lists_only_voices_it_serves(s: &Subject) {
    let e = &*s.engine;
    let voices: Vec<VoiceInfo> = e.voices();
    assert!(!voices.is_empty(), "{} lists voices", e.name());
    for v in &voices {
        assert!(e.serves_model(&v.model), "{v:?}");
        assert_eq!(e.check_voice(&v.model, &v.name), Ok(()), "{v:?}");
        assert_eq!(
            e.native_sample_rate(&v.model, &v.name),
            v.native_sample_rate
        );
        assert!(v.native_sample_rate > 0, "{v:?}");
        let default = e.default_voice(&v.model);
        assert_eq!(e.check_voice(&v.model, &default), Ok(()), "{default:?}");
    }
    assert!(!e.serves_model("no-such-model"));
}

/// A request with a voice its model does not have fails when it starts, before any audio: the
/// stream is never handed out.
async fn refuses_an_unknown_voice_before_any_audio(s: &Subject) {
    let req = SynthesisRequest {
        voice: s.unknown_voice.to_owned(),
        ..(s.request)(TEXT)
    };
    match s.engine.synthesize(req).await {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(_) => panic!("{}: a stream for an unknown voice", s.engine.name()),
    }
}

/// An option the model does not take is refused by `check_request`, the message starting with
/// the option's field.
async fn refuses_an_option_its_model_does_not_take(s: &Subject) {
    let (set, field) = s.unsupported;
    let mut req = (s.request)(TEXT);
    assert_eq!(s.engine.check_request(&req), Ok(()), "the plain request");
    set(&mut req);
    let message = s.engine.check_request(&req).expect_err(field).to_string();
    assert!(message.starts_with(field), "{message}");
}

/// Dropping the stream after its first audio stops the work behind it within a second.
async fn dropping_the_stream_stops_the_work(s: &Subject) {
    let long = (s.request)(&"A long sentence that keeps the engine busy for a while. ".repeat(40));
    let mut stream = start(&*s.engine, long).await;
    loop {
        match stream.next().await {
            Some(Ok(SynthEvent::Audio { .. })) => break,
            Some(Ok(_)) => continue,
            other => panic!("audio before the end: {other:?}"),
        }
    }
    let running = match s.work {
        Work::Child(name) => !children_named(name).is_empty(),
        Work::Upstream => s.double.as_ref().expect("the double").requests()[0]
            .ended_at
            .is_none(),
    };
    assert!(running, "the work runs while the stream is read");
    drop(stream);
    match s.work {
        Work::Child(name) => {
            let dropped = tokio::time::Instant::now();
            while !children_named(name).is_empty() {
                assert!(
                    dropped.elapsed() < Duration::from_secs(1),
                    "{name} still there 1 s after the drop: {:?}",
                    children_named(name)
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Work::Upstream => {
            // The piece that was playing is cut; pieces synthesized ahead end too.
            let double = s.double.as_ref().expect("the double");
            for i in 0..double.requests().len() {
                let entry = double
                    .wait_ended(i, Duration::from_secs(1))
                    .await
                    .unwrap_or_else(|| panic!("upstream request {i} still open after 1 s"));
                if i == 0 {
                    assert!(entry.disconnected && !entry.completed, "{entry:?}");
                }
            }
        }
    }
}

// ---- the implementations ----

/// One module of tests per implementation: `module::property` runs `property` on `subject`.
macro_rules! contract {
    ($module:ident = $subject:expr; $($property:ident),+ $(,)?) => {
        mod $module {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $property() {
                    super::$property(&$subject).await;
                }
            )+
        }
    };
}

async fn espeak() -> Subject {
    let engine = Espeak::new(EspeakConfig::default())
        .await
        .expect("espeak-ng is installed");
    Subject {
        engine: Arc::new(engine),
        request: |text| SynthesisRequest {
            text: text.to_owned(),
            voice: "en".to_owned(),
            model: "espeak-ng".to_owned(),
            speed: 1.0,
            pitch: 1.0,
            request_id: "contract".to_owned(),
            output_sample_rate: 22_050,
            ..SynthesisRequest::default()
        },
        unknown_voice: "xx-nonexistent",
        unsupported: (|r| r.emotion = Some("happy".to_owned()), "emotion"),
        work: Work::Child("espeak-ng"),
        double: None,
    }
}

contract!(espeak = espeak().await;
    yields_audio_then_one_finished_last,
    its_audio_decodes_at_one_spec,
    lists_only_voices_it_serves,
    refuses_an_unknown_voice_before_any_audio,
    refuses_an_option_its_model_does_not_take,
);

/// espeak-ng's children are children of the test process: the property runs alone in one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn espeak_dropping_the_stream_stops_the_work() {
    if own_process!(espeak_dropping_the_stream_stops_the_work) {
        dropping_the_stream_stops_the_work(&espeak().await).await;
    }
}

/// `contract!` with every property.
macro_rules! every_property {
    ($module:ident = $subject:expr) => {
        contract!($module = $subject;
            yields_audio_then_one_finished_last,
            its_audio_decodes_at_one_spec,
            lists_only_voices_it_serves,
            refuses_an_unknown_voice_before_any_audio,
            refuses_an_option_its_model_does_not_take,
            dropping_the_stream_stops_the_work,
        );
    };
}

/// A DashScope engine (the one serving `model`) calling a double that paces its audio at real
/// time.
async fn dashscope(
    request: fn(&str) -> SynthesisRequest,
    unknown_voice: &'static str,
    unsupported: (fn(&mut SynthesisRequest), &'static str),
) -> Subject {
    let double = DashScopeDouble::start(API_KEY).await;
    double.set_options(Options {
        pace: 1.0,
        ..Options::default()
    });
    let client = Client::new(Settings {
        api_key: SecretString::from(API_KEY.to_owned()),
        api_key_source: "test".to_owned(),
        base_url: double.base_url(),
        workspace_id: None,
        tuning: Tuning::default(),
    })
    .expect("a DashScope client");
    let model = request(TEXT).model;
    let engine = client
        .engines()
        .into_iter()
        .find(|e| e.serves_model(&model))
        .expect("an engine serves the model");
    Subject {
        engine,
        request,
        unknown_voice,
        unsupported,
        work: Work::Upstream,
        double: Some(double),
    }
}

/// A request for `model` and `voice`, at 16 kHz.
fn dashscope_request(model: &str, voice: &str, text: &str) -> SynthesisRequest {
    SynthesisRequest {
        text: text.to_owned(),
        voice: voice.to_owned(),
        model: model.to_owned(),
        speed: 1.0,
        pitch: 1.0,
        request_id: "contract".to_owned(),
        output_sample_rate: 16_000,
        ..SynthesisRequest::default()
    }
}

every_property!(
    cosyvoice = dashscope(
        |text| dashscope_request("cosyvoice-v3-flash", "longanyang", text),
        "no_such_voice",
        (|r| r.emotion = Some("happy".to_owned()), "emotion"),
    )
    .await
);

every_property!(
    qwen_tts = dashscope(
        |text| dashscope_request("qwen3-tts-flash", "Cherry", text),
        "Nobody",
        (|r| r.seed = Some(5), "seed"),
    )
    .await
);

every_property!(
    minimax = dashscope(
        |text| dashscope_request("MiniMax/speech-2.8-hd", "male-qn-qingse", text),
        "nobody",
        (|r| r.emotion = Some("whisper".to_owned()), "emotion"),
    )
    .await
);

/// The cache's replay of a stored phrase (`cache::replay`), behind the `Synthesizer` face the
/// provider gives it: the entry is what a flight stores for an espeak-ng synthesis of the text
/// (`cache::canonical_pcm`).
struct Replay {
    entry: Entry,
}

#[async_trait::async_trait]
impl Synthesizer for Replay {
    fn name(&self) -> &'static str {
        "cache"
    }
    fn serves_model(&self, model: &str) -> bool {
        model == self.entry.meta.model
    }
    fn default_voice(&self, _model: &str) -> String {
        self.entry.meta.voice.clone()
    }
    fn voices(&self) -> Vec<VoiceInfo> {
        Vec::new()
    }
    fn native_sample_rate(&self, _model: &str, _voice: &str) -> u32 {
        self.entry.meta.sample_rate
    }
    async fn synthesize(&self, req: SynthesisRequest) -> Result<SynthStream, EngineError> {
        Ok(cache::replay(self.entry.clone(), req.word_timestamps))
    }
}

async fn cache_replay() -> Subject {
    let espeak = espeak().await;
    let events = collect(start(&*espeak.engine, (espeak.request)(TEXT)).await).await;
    let (spec, pcm, frames): (AudioSpec, Bytes, u64) =
        canonical_pcm(&events).expect("canonical PCM");
    let entry = Entry {
        meta: EntryMeta {
            key: String::new(),
            engine: "espeak-ng".to_owned(),
            model: "espeak-ng".to_owned(),
            voice: "en".to_owned(),
            text_hash: cache::key::text_hash(TEXT),
            sample_rate: spec.sample_rate,
            channels: spec.channels,
            frames,
            characters: None,
            words: None,
            created_unix_ms: 0,
        },
        pcm,
    };
    Subject {
        engine: Arc::new(Replay { entry }),
        ..espeak
    }
}

contract!(cache_replay = cache_replay().await;
    yields_audio_then_one_finished_last,
    its_audio_decodes_at_one_spec,
);
