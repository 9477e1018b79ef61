//! The herald.v1.Speech handlers: translate the wire request → call the core → map its
//! events and errors.
//!
//! Handlers are thin (console-subscriber, tonic's streaming example): no limits, defaults or
//! job logic live here, only the protobuf translation (`synthesize`, `speak`,
//! `voices`) and the mapping of domain errors to statuses ([`super::status`]). A
//! response stream that the client drops stops its job.

use std::{pin::Pin, sync::Arc};

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::deadline::{call_deadline, grpc_timeout, peer_of};
use crate::{
    engine::VoiceInfo,
    metrics::metrics,
    pb,
    playback::{Announcement, Playback, StopScope},
    provider::Provider,
    synthesis::{Core, Request as CoreRequest},
};

/// Speak events buffered per announcement between the device task and the handler (an
/// announcement has at most four).
const SPEAK_EVENTS: usize = 16;

/// The herald.v1.Speech service. Cheap to clone; every clone serves the same daemon.
#[derive(Clone)]
pub struct SpeechService {
    core: Arc<Core>,
    /// Local playback: the announcement queues.
    playback: Arc<Playback>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl SpeechService {
    /// The door over `core` and `playback`.
    pub fn new(core: Arc<Core>, playback: Arc<Playback>) -> Self {
        Self { core, playback }
    }

    /// The synthesis core.
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// The provider requests go through.
    pub(crate) fn provider(&self) -> &Arc<Provider> {
        self.core.provider()
    }

    /// The core job of a wire request (as `Synthesize` would run it), or its status.
    pub(crate) fn prepare(
        &self,
        req: pb::SynthesizeRequest,
    ) -> Result<crate::synthesis::Job, Status> {
        let request = super::synthesize::request(req)?;
        Ok(self.core.prepare(request)?)
    }

    fn voice_deadline(&self, metadata: &tonic::metadata::MetadataMap) -> tokio::time::Instant {
        call_deadline(metadata, self.core.settings().max_deadline)
    }
}

/// A voice matches a language filter when one of its tags is the filter or starts with
/// `filter-` (`en` matches `en-US`); an empty filter matches every voice.
fn speaks(languages: &[String], filter: &str) -> bool {
    filter.is_empty()
        || languages.iter().any(|l| {
            let l = l.to_ascii_lowercase();
            l == filter || l.starts_with(&format!("{filter}-"))
        })
}

fn voice_to_pb(engine: &str, v: VoiceInfo) -> pb::Voice {
    pb::Voice {
        name: v.name,
        display_name: v.display_name,
        languages: v.languages,
        engine: engine.to_owned(),
        model: v.model,
        native_sample_rate_hz: v.native_sample_rate,
        gender: v.gender,
        custom: false,
        custom_status: 0,
    }
}

#[tonic::async_trait]
impl pb::speech_server::Speech for SpeechService {
    type SynthesizeStream = BoxStream<pb::SynthesizeResponse>;
    type SpeakStream = BoxStream<pb::SpeakEvent>;
    type SynthesizeStreamStream = BoxStream<pb::SynthesizeResponse>;

    async fn synthesize(
        &self,
        request: Request<pb::SynthesizeRequest>,
    ) -> Result<Response<Self::SynthesizeStream>, Status> {
        let asked = grpc_timeout(request.metadata());
        let peer = peer_of(&request);
        let label = self.core.model_label(&request.get_ref().model);
        let request = super::synthesize::request(request.into_inner())
            .inspect_err(|e| metrics().outcome(&label, "", Err(e.kind())))?;
        let events = self.core.synthesize(request, peer, asked)?;
        Ok(Response::new(Box::pin(
            events.map(super::synthesize::response),
        )))
    }

    async fn synthesize_stream(
        &self,
        request: Request<tonic::Streaming<pb::SynthesizeStreamRequest>>,
    ) -> Result<Response<Self::SynthesizeStreamStream>, Status> {
        let asked = grpc_timeout(request.metadata());
        let peer = peer_of(&request);
        let idle = self.core.settings().stream_idle_timeout;
        let mut inbound = request.into_inner();
        let config = super::synthesize::stream_config(&mut inbound, idle).await?;
        let label = self.core.model_label(&config.model);
        let request = super::synthesize::request(config)
            .inspect_err(|e| metrics().outcome(&label, "", Err(e.kind())))?;
        let (input, events) = self.core.synthesize_stream(request, peer, asked)?;
        tokio::spawn(super::synthesize::forward_text(inbound, input));
        Ok(Response::new(Box::pin(
            events.map(super::synthesize::response),
        )))
    }

    async fn list_voices(
        &self,
        request: Request<pb::ListVoicesRequest>,
    ) -> Result<Response<pb::ListVoicesResponse>, Status> {
        let req = request.into_inner();
        let language = req.language.trim().to_ascii_lowercase();
        let mut voices: Vec<pb::Voice> = self
            .core
            .provider()
            .engines()
            .all()
            .iter()
            .flat_map(|engine| {
                let name = engine.name();
                engine.voices().into_iter().map(move |v| (name, v))
            })
            .filter(|(_, v)| req.model.is_empty() || v.model == req.model)
            .filter(|(_, v)| speaks(&v.languages, &language))
            .map(|(engine, v)| voice_to_pb(engine, v))
            .collect();
        let (custom, missing) = super::voices::list(self.core.voices(), &req.model).await;
        voices.extend(
            custom
                .into_iter()
                .filter(|v| req.model.is_empty() || v.model == req.model)
                .filter(|v| speaks(&v.languages, &language)),
        );
        Ok(Response::new(pb::ListVoicesResponse { voices, missing }))
    }

    async fn speak(
        &self,
        request: Request<pb::SpeakRequest>,
    ) -> Result<Response<Self::SpeakStream>, Status> {
        let req = request.into_inner();
        let playback = Arc::clone(&self.playback);
        let device = playback
            .resolve(&req.device)
            .map_err(|e| e.prefixed("device: "))?;
        let speak = super::speak::validate(&req, playback.settings())?;
        let job = self.core.prepare(CoreRequest {
            text: req.text,
            voice: req.voice,
            model: req.model,
            language: req.language,
            instructions: req.instructions,
            speed: req.speed,
            pitch: req.pitch,
            ..CoreRequest::default()
        })?;
        let (events_tx, mut events) = mpsc::channel(SPEAK_EVENTS);
        let id = speak.id.clone();
        playback.enqueue(
            &device,
            Announcement {
                id: speak.id,
                priority: speak.priority,
                job,
                volume: speak.volume,
                chime: speak.chime,
                leading_silence: speak.leading_silence,
                expires_at: speak.expires_at,
                events: events_tx.into(),
            },
        )?;
        tracing::debug!(%id, %device, "speak queued");
        let (tx, rx) = mpsc::channel(8);
        let cancel_on_disconnect = req.cancel_on_disconnect;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    report = events.recv() => {
                        // Closed only after the final event: the announcement reports one
                        // whatever ends it (`playback::Events`).
                        let Some(report) = report else { return };
                        let last = report.event.is_final();
                        if tx.send(Ok(super::speak::event_to_pb(report))).await.is_err() && !last {
                            if cancel_on_disconnect {
                                playback.stop(&device, StopScope::Id(id.clone())).await;
                            }
                            return;
                        }
                        if last {
                            return;
                        }
                    }
                    () = tx.closed() => {
                        if cancel_on_disconnect {
                            tracing::debug!(%id, "speak client left; cancelling its announcement");
                            playback.stop(&device, StopScope::Id(id.clone())).await;
                        }
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stop_speaking(
        &self,
        request: Request<pb::StopSpeakingRequest>,
    ) -> Result<Response<pb::StopSpeakingResponse>, Status> {
        let req = request.into_inner();
        let device = self
            .playback
            .resolve(&req.device)
            .map_err(|e| e.prefixed("device: "))?;
        let scope = super::speak::stop_scope(&req)?;
        let stopped_ids = self.playback.stop(&device, scope).await;
        Ok(Response::new(pb::StopSpeakingResponse { stopped_ids }))
    }

    async fn create_voice(
        &self,
        request: Request<pb::CreateVoiceRequest>,
    ) -> Result<Response<pb::CustomVoice>, Status> {
        let deadline = self.voice_deadline(request.metadata());
        super::voices::create(self.core.voices(), request.into_inner(), deadline)
            .await
            .map(Response::new)
    }

    async fn get_voice(
        &self,
        request: Request<pb::GetVoiceRequest>,
    ) -> Result<Response<pb::CustomVoice>, Status> {
        let deadline = self.voice_deadline(request.metadata());
        super::voices::get(self.core.voices(), request.into_inner(), deadline)
            .await
            .map(Response::new)
    }

    async fn delete_voice(
        &self,
        request: Request<pb::DeleteVoiceRequest>,
    ) -> Result<Response<pb::DeleteVoiceResponse>, Status> {
        let deadline = self.voice_deadline(request.metadata());
        super::voices::delete(self.core.voices(), request.into_inner(), deadline)
            .await
            .map(Response::new)
    }

    async fn list_output_devices(
        &self,
        _request: Request<pb::ListOutputDevicesRequest>,
    ) -> Result<Response<pb::ListOutputDevicesResponse>, Status> {
        let (list, default) = self.playback.devices();
        let mut devices: Vec<pb::OutputDevice> = list
            .into_iter()
            .map(|d| pb::OutputDevice {
                is_default: d.name == default,
                name: d.name,
                description: d.description,
                sample_rates_hz: d.sample_rates,
                channels: d.channels,
            })
            .collect();
        if !devices.iter().any(|d| d.name == "default") {
            devices.insert(
                0,
                pb::OutputDevice {
                    name: "default".to_owned(),
                    description: "The system's default output device".to_owned(),
                    is_default: default == "default",
                    sample_rates_hz: Vec::new(),
                    channels: Vec::new(),
                },
            );
        }
        Ok(Response::new(pb::ListOutputDevicesResponse { devices }))
    }
}
