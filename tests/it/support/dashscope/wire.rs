//! What the double sends: the JSON bodies and SSE events of each family (CosyVoice's sentence
//! framing, Qwen's usage, MiniMax's hex audio and `base_resp`), the scripted faults applied to
//! them, and error objects.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use base64::Engine as _;
use serde_json::{Value, json};

use super::{
    FaultKind, Options,
    audio::{Audio, pieces, render_audio},
    is_cjk,
    request::{Family, SynthRequest},
    server::Inner,
    split_sentences, text_units,
};

/// What to send after the response head.
pub(super) enum Step {
    /// Do not go on before this much audio (ms) has had time to play (scaled by `pace`).
    At(f64),
    /// One SSE event (counted in `frames_sent`).
    Event(Bytes),
    /// A non-SSE body chunk.
    Raw(Bytes),
    /// Send nothing more until the client leaves.
    Stall,
    /// Abort the connection.
    Abort,
}

/// A whole answer: the head, then the steps of its body.
pub(super) struct Reply {
    pub(super) status: u16,
    /// `text/event-stream` (else JSON).
    pub(super) sse_body: bool,
    /// `x-dashscope-finished`.
    pub(super) finished: bool,
    pub(super) steps: Vec<Step>,
}

impl Reply {
    /// A JSON body, all at once.
    pub(super) fn json(status: u16, body: &Value) -> Reply {
        Reply {
            status,
            sse_body: false,
            finished: true,
            steps: vec![Step::Raw(Bytes::from(body.to_string()))],
        }
    }
}

/// DashScope's error object.
pub(super) fn error_body(code: &str, message: &str, request_id: &str) -> Value {
    json!({"code": code, "message": message, "request_id": request_id})
}

/// An error answered as JSON with an HTTP status.
pub(super) fn json_error(status: u16, code: &str, message: &str, request_id: &str) -> Reply {
    Reply::json(status, &error_body(code, message, request_id))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One event of a stream before serialization.
enum Ev {
    Result {
        /// Top-level members in wire order.
        members: Vec<(&'static str, Value)>,
        /// Audio carried (base64 or hex), if any.
        audio: Option<String>,
        /// Audio time (ms) at which this event starts, for pacing.
        at_ms: f64,
    },
    Error {
        status: u16,
        body: Value,
    },
    BadJson,
    Drop,
    Stall,
}

impl Ev {
    fn carries_audio(&self) -> bool {
        matches!(self, Ev::Result { audio: Some(a), .. } if !a.is_empty())
    }
}

fn sse_event(id: usize, event: &str, status: u16, lines: &[String]) -> Bytes {
    let mut s = format!("id:{id}\nevent:{event}\n:HTTP_STATUS/{status}\n");
    for line in lines {
        s.push_str("data:");
        s.push_str(line);
        s.push('\n');
    }
    s.push('\n');
    Bytes::from(s)
}

pub(super) fn sse_error_event(id: usize, status: u16, body: &Value) -> Bytes {
    sse_event(id, "error", status, &[body.to_string()])
}

fn members_json(members: &[(&'static str, Value)]) -> Vec<String> {
    members
        .iter()
        .map(|(k, v)| format!("{}:{}", Value::from(*k), v))
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Split {
    None,
    Members,
    Concat,
}

fn data_lines(members: &[(&'static str, Value)], audio: Option<&str>, split: Split) -> Vec<String> {
    let parts = members_json(members);
    let one = format!("{{{}}}", parts.join(","));
    match split {
        Split::None => vec![one],
        Split::Members => {
            let n = parts.len();
            parts
                .into_iter()
                .enumerate()
                .map(|(i, p)| {
                    let open = if i == 0 { "{" } else { "" };
                    let close = if i + 1 == n { "}" } else { "," };
                    format!("{open}{p}{close}")
                })
                .collect()
        }
        Split::Concat => {
            // Split inside a long string: the audio, else the request id.
            let target = audio
                .filter(|a| a.len() >= 3)
                .map(|a| format!("\"{a}\""))
                .or_else(|| {
                    members
                        .iter()
                        .find(|(k, _)| *k == "request_id")
                        .map(|(_, v)| v.to_string())
                });
            let Some(target) = target.filter(|t| t.len() >= 5) else {
                return vec![one];
            };
            let Some(start) = one.find(&target) else {
                return vec![one];
            };
            let inner = target.len() - 2;
            let a = start + 1 + inner / 3;
            let b = start + 1 + (2 * inner) / 3;
            vec![
                one[..a].to_owned(),
                one[a..b].to_owned(),
                one[b..].to_owned(),
            ]
        }
    }
}

fn usage_members(req: &SynthRequest, characters: usize, audio_ms: f64) -> Value {
    if req.family == Family::Qwen && req.model.starts_with("qwen-tts") {
        // Legacy qwen-tts bills tokens (≈50 audio tokens per second).
        let input = req.units;
        let output = (audio_ms / 20.0).ceil() as usize;
        json!({
            "total_tokens": input + output,
            "input_tokens_details": {"text_tokens": input},
            "output_tokens": output,
            "input_tokens": input,
            "output_tokens_details": {"audio_tokens": output, "text_tokens": 0},
        })
    } else {
        json!({"characters": characters})
    }
}

fn word_count(text: &str) -> usize {
    let cjk = text.chars().filter(|c| is_cjk(*c)).count();
    let words = text
        .split(|c: char| !c.is_alphanumeric() || is_cjk(c))
        .filter(|w| !w.is_empty())
        .count();
    cjk + words
}

fn minimax_output(audio: &str, status: u8, extra: Option<Value>, trace_id: &str) -> Value {
    let mut out = json!({
        "base_resp": {"status_code": 0, "status_msg": "success"},
        "data": {"audio": audio, "status": status},
    });
    if let Some(extra) = extra {
        out["extra_info"] = extra;
    }
    out["trace_id"] = Value::from(trace_id);
    out
}

fn minimax_extra(req: &SynthRequest, audio: &Audio) -> Value {
    json!({
        "audio_channel": req.channels,
        "audio_format": req.fmt.ext(),
        "audio_length": audio.ms.round() as u64,
        "audio_sample_rate": req.rate,
        "audio_size": audio.file.len(),
        "bitrate": req.bitrate,
        "invisible_character_ratio": 0,
        "usage_characters": req.units,
        "word_count": word_count(&req.text),
    })
}

/// What the response builders share for one request.
struct Ctx<'a> {
    req: &'a SynthRequest,
    options: &'a Options,
    audio: Audio,
    rid: &'a str,
    now: u64,
    audio_id: String,
    /// Where `/oss/` serves the audio.
    url: String,
    /// MiniMax's trace id.
    trace_id: String,
}

/// The answer to a valid request: its audio rendered (and kept for `/oss/`), as one JSON body
/// or as SSE events, with `fault` applied.
pub(super) fn respond(
    inner: &Inner,
    req: &SynthRequest,
    sse: bool,
    rid: &str,
    options: &Options,
    fault: Option<&FaultKind>,
) -> Reply {
    let audio = render_audio(req, options, matches!(fault, Some(FaultKind::CorruptAudio)));
    let now = now_secs();
    let file_name = format!("{rid}.{}", req.fmt.ext());
    let url = format!(
        "http://{}/oss/{file_name}?Expires={}&OSSAccessKeyId=LTAI5tFakeDashScope&Signature=ZmFrZQ%3D%3D",
        inner.addr,
        now + 86_400
    );
    inner.state().files.insert(
        file_name,
        (req.fmt.content_type(), Bytes::from(audio.file.clone())),
    );
    let ctx = Ctx {
        req,
        options,
        audio,
        rid,
        now,
        audio_id: format!("audio_{rid}"),
        url,
        trace_id: rid.replace('-', ""),
    };
    if !sse {
        return non_stream_reply(&ctx, fault);
    }
    let mut evs = stream_events(&ctx);
    let split = apply_stream_fault(&ctx, &mut evs, fault);
    sse_reply(evs, split)
}

/// The JSON answer of a non-streaming request, with `fault` applied.
fn non_stream_reply(c: &Ctx<'_>, fault: Option<&FaultKind>) -> Reply {
    let (req, audio, rid, now) = (c.req, &c.audio, c.rid, c.now);
    let (audio_id, url, trace_id) = (&c.audio_id, &c.url, &c.trace_id);
    let body = match req.family {
        Family::Cosy => format!(
            "{{\"request_id\":{},\"output\":{},\"usage\":{}}}",
            Value::from(rid),
            json!({"finish_reason": "stop", "audio": {"data": "", "url": url, "id": audio_id, "expires_at": now + 86_400}}),
            json!({"characters": req.units}),
        ),
        Family::Qwen => format!(
            "{{\"output\":{},\"usage\":{},\"request_id\":{}}}",
            json!({"audio": {"data": "", "expires_at": now + 86_400, "id": audio_id, "url": url}, "finish_reason": "stop"}),
            usage_members(req, req.units, audio.ms),
            Value::from(rid),
        ),
        Family::MiniMax => {
            let data = if matches!(fault, Some(FaultKind::BadBase64After { .. })) {
                "zz-this-is-not-hex".to_owned()
            } else if req.minimax_url {
                url.clone()
            } else {
                hex::encode(&audio.file)
            };
            format!(
                "{{\"output\":{},\"usage\":{},\"request_id\":{}}}",
                minimax_output(&data, 2, Some(minimax_extra(req, audio)), trace_id),
                json!({"characters": req.units}),
                Value::from(rid),
            )
        }
    };
    let half = body.len() / 2;
    match fault {
        Some(FaultKind::OkWithCode { code, message }) => {
            Reply::json(200, &error_body(code, message, rid))
        }
        Some(FaultKind::MiniMaxStatus {
            status_code,
            status_msg,
        }) => Reply::json(200, &minimax_error(*status_code, status_msg, rid)),
        Some(FaultKind::SseErrorAfter {
            http_status_comment,
            code,
            message,
            ..
        }) => json_error(*http_status_comment, code, message, rid),
        Some(FaultKind::DropAfter { .. }) => Reply {
            status: 200,
            sse_body: false,
            finished: true,
            steps: vec![Step::Raw(Bytes::from(body).slice(..half)), Step::Abort],
        },
        Some(FaultKind::StallAfter { .. }) => Reply {
            status: 200,
            sse_body: false,
            finished: true,
            steps: vec![Step::Stall],
        },
        Some(FaultKind::BadJsonAfter { .. }) => Reply {
            status: 200,
            sse_body: false,
            finished: true,
            steps: vec![Step::Raw(Bytes::from(body).slice(..half))],
        },
        _ => Reply {
            status: 200,
            sse_body: false,
            finished: true,
            steps: vec![Step::Raw(Bytes::from(body))],
        },
    }
}

/// The events of a clean stream.
fn stream_events(c: &Ctx<'_>) -> Vec<Ev> {
    let (req, options, audio, rid, now) = (c.req, c.options, &c.audio, c.rid, c.now);
    let (audio_id, url, trace_id) = (&c.audio_id, &c.url, &c.trace_id);
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut evs: Vec<Ev> = Vec::new();
    match req.family {
        Family::Cosy => {
            let sentences = split_sentences(&req.text);
            let mut cum = 0usize;
            for (index, sentence) in sentences.iter().enumerate() {
                let t0 = cum as f64 * f64::from(options.ms_per_unit);
                cum += text_units(sentence);
                let t1 = cum as f64 * f64::from(options.ms_per_unit);
                let usage = json!({"characters": cum});
                // Words (whitespace-separated), timed from the request's start like the audio:
                // `ms_per_unit` per text unit from where the word starts in its sentence.
                let words: Vec<Value> = if req.words {
                    sentence
                        .split_whitespace()
                        .map(|w| {
                            let at = w.as_ptr() as usize - sentence.as_ptr() as usize;
                            let begin = t0 + text_units(&sentence[..at]) as f64 * f64::from(options.ms_per_unit);
                            let end = begin + text_units(w) as f64 * f64::from(options.ms_per_unit);
                            let units_before = text_units(&sentence[..at]);
                            json!({"text": w, "begin_index": units_before, "end_index": units_before + w.chars().count(),
                                "begin_time": begin.round() as u64, "end_time": end.round() as u64})
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                let framing = |kind: &str, at_ms: f64| Ev::Result {
                    members: vec![
                        (
                            "output",
                            json!({"finish_reason": "null", "type": kind, "original_text": sentence,
                                "sentence": {"index": index, "words": if kind == "sentence-end" { words.clone() } else { Vec::new() }},
                                "audio": {"data": "", "id": audio_id, "expires_at": now}}),
                        ),
                        ("usage", usage.clone()),
                        ("request_id", Value::from(rid)),
                    ],
                    audio: None,
                    at_ms,
                };
                evs.push(framing("sentence-begin", t0.min(audio.ms)));
                for (at, bytes) in pieces(audio, t0, t1, options.chunk_ms) {
                    let data = b64(&bytes);
                    evs.push(Ev::Result {
                        members: vec![
                            (
                                "output",
                                json!({"finish_reason": "null", "type": "sentence-synthesis",
                                    "sentence": {"index": index, "words": []},
                                    "audio": {"data": data, "id": audio_id, "expires_at": now}}),
                            ),
                            ("usage", usage.clone()),
                            ("request_id", Value::from(rid)),
                        ],
                        audio: Some(data),
                        at_ms: at,
                    });
                }
                evs.push(framing("sentence-end", t1.min(audio.ms)));
            }
            evs.push(Ev::Result {
                members: vec![
                    (
                        "output",
                        json!({"finish_reason": "stop", "audio": {"data": "", "url": url, "id": audio_id, "expires_at": now + 86_400}}),
                    ),
                    ("usage", json!({"characters": req.units})),
                    ("request_id", Value::from(rid)),
                ],
                audio: None,
                at_ms: audio.ms,
            });
        }
        Family::Qwen => {
            for (at, bytes) in pieces(audio, 0.0, audio.ms, options.chunk_ms) {
                let data = b64(&bytes);
                let end_ms = at + f64::from(options.chunk_ms);
                evs.push(Ev::Result {
                    members: vec![
                        (
                            "output",
                            json!({"finish_reason": "null", "audio": {"data": data, "expires_at": now, "id": audio_id}}),
                        ),
                        ("usage", usage_members(req, req.units, end_ms.min(audio.ms))),
                        ("request_id", Value::from(rid)),
                    ],
                    audio: Some(data),
                    at_ms: at,
                });
            }
            evs.push(Ev::Result {
                members: vec![
                    (
                        "output",
                        json!({"finish_reason": "stop", "audio": {"expires_at": now + 86_400, "id": audio_id, "data": "", "url": url}}),
                    ),
                    ("usage", usage_members(req, req.units, audio.ms)),
                    ("request_id", Value::from(rid)),
                ],
                audio: None,
                at_ms: audio.ms,
            });
        }
        Family::MiniMax => {
            let usage = json!({"characters": req.units});
            for (at, bytes) in pieces(audio, 0.0, audio.ms, options.chunk_ms) {
                let data = hex::encode(&bytes);
                evs.push(Ev::Result {
                    members: vec![
                        ("output", minimax_output(&data, 1, None, trace_id)),
                        ("usage", usage.clone()),
                        ("request_id", Value::from(rid)),
                    ],
                    audio: Some(data),
                    at_ms: at,
                });
            }
            let aggregated = if req.exclude_aggregated {
                String::new()
            } else {
                hex::encode(&audio.stream)
            };
            evs.push(Ev::Result {
                members: vec![
                    (
                        "output",
                        minimax_output(&aggregated, 2, Some(minimax_extra(req, audio)), trace_id),
                    ),
                    ("usage", usage),
                    ("request_id", Value::from(rid)),
                ],
                // The aggregate repeats audio already sent: not an audio event for fault counting.
                audio: None,
                at_ms: audio.ms,
            });
        }
    }

    evs
}

/// Apply `fault` to the events of a stream; returns how to write `data:` lines.
fn apply_stream_fault(c: &Ctx<'_>, evs: &mut Vec<Ev>, fault: Option<&FaultKind>) -> Split {
    let (req, rid) = (c.req, c.rid);
    // Where an `…After { frames }` fault goes: audio event number `frames`, else the final event.
    let audio_positions: Vec<usize> = evs
        .iter()
        .enumerate()
        .filter(|(_, e)| e.carries_audio())
        .map(|(i, _)| i)
        .collect();
    let last = evs.len() - 1;
    let at = |k: usize| audio_positions.get(k).copied().unwrap_or(last);
    let mut split = Split::None;
    match fault {
        Some(FaultKind::SseErrorAfter {
            frames,
            http_status_comment,
            code,
            message,
        }) => {
            evs.truncate(at(*frames));
            evs.push(Ev::Error {
                status: *http_status_comment,
                body: error_body(code, message, rid),
            });
        }
        Some(FaultKind::OkWithCode { code, message }) => {
            *evs = vec![Ev::Result {
                members: vec![
                    ("code", Value::from(code.as_str())),
                    ("message", Value::from(message.as_str())),
                    ("request_id", Value::from(rid)),
                ],
                audio: None,
                at_ms: 0.0,
            }];
        }
        Some(FaultKind::MiniMaxStatus {
            status_code,
            status_msg,
        }) => {
            let body = minimax_error(*status_code, status_msg, rid);
            *evs = vec![Ev::Result {
                members: vec![
                    ("output", body["output"].clone()),
                    ("request_id", Value::from(rid)),
                ],
                audio: None,
                at_ms: 0.0,
            }];
        }
        Some(FaultKind::DropAfter { frames }) => {
            evs.truncate(at(*frames));
            evs.push(Ev::Drop);
        }
        Some(FaultKind::StallAfter { frames }) => {
            evs.truncate(at(*frames));
            evs.push(Ev::Stall);
        }
        Some(FaultKind::BadJsonAfter { frames }) => {
            let pos = at(*frames);
            evs.insert(pos, Ev::BadJson);
        }
        Some(FaultKind::BadBase64After { frames }) => {
            if let Some(&pos) = audio_positions
                .get(*frames)
                .or_else(|| audio_positions.last())
                && let Ev::Result { members, audio, .. } = &mut evs[pos]
            {
                let bad = if req.family == Family::MiniMax {
                    "zz-this-is-not-hex"
                } else {
                    "@@@ this is not base64 @@@"
                };
                let output = &mut members[0].1;
                if req.family == Family::MiniMax {
                    output["data"]["audio"] = Value::from(bad);
                } else {
                    output["audio"]["data"] = Value::from(bad);
                }
                *audio = Some(bad.to_owned());
            }
        }
        Some(FaultKind::MultiLineData) => split = Split::Members,
        Some(FaultKind::MultiLineDataConcat) => split = Split::Concat,
        _ => {}
    }

    split
}

/// The SSE reply writing `evs`, numbered from 1.
fn sse_reply(evs: Vec<Ev>, split: Split) -> Reply {
    let mut steps = Vec::new();
    for (i, ev) in evs.into_iter().enumerate() {
        let id = i + 1;
        match ev {
            Ev::Result {
                members,
                audio,
                at_ms,
            } => {
                steps.push(Step::At(at_ms));
                let lines = data_lines(&members, audio.as_deref(), split);
                steps.push(Step::Event(sse_event(id, "result", 200, &lines)));
            }
            Ev::Error { status, body } => {
                steps.push(Step::Event(sse_error_event(id, status, &body)))
            }
            Ev::BadJson => steps.push(Step::Event(sse_event(
                id,
                "result",
                200,
                &[
                    "{\"output\":{\"finish_reason\":\"null\",\"audio\":{\"data\":\"UklGR"
                        .to_owned(),
                ],
            ))),
            Ev::Drop => steps.push(Step::Abort),
            Ev::Stall => steps.push(Step::Stall),
        }
    }
    Reply {
        status: 200,
        sse_body: true,
        finished: false,
        steps,
    }
}

fn minimax_error(status_code: i64, status_msg: &str, rid: &str) -> Value {
    json!({
        "output": {
            "base_resp": {"status_code": status_code, "status_msg": status_msg},
            "data": null,
            "trace_id": rid.replace('-', ""),
        },
        "request_id": rid,
    })
}
