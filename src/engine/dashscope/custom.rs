//! The custom-voice management endpoint (dashscope-custom-voices.md §1–§2): one synchronous
//! JSON request/response, `POST {base}/services/audio/tts/customization`, the surface named by
//! the body's `model` and the operation by `input.action`.
//!
//! An answer is an error when its status is not 2xx **or** its body carries a non-empty
//! top-level `code` (§2.2). Creates are never retried (a duplicate consumes quota, §9);
//! list/query/delete are retried on 429, 5xx and transport errors like synthesis requests.

use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{Client, backoff, family};
use crate::engine::EngineError;

/// Path of the endpoint under the base URL.
pub const CUSTOMIZATION_PATH: &str = "/services/audio/tts/customization";
/// Largest response body read (design previews are inline base64).
const MAX_BODY: usize = 32 << 20;

impl Client {
    /// One call of the customization endpoint; the whole JSON body on success.
    ///
    /// `retry`: whether the action is idempotent (list/query/delete). `deadline` bounds the
    /// whole call, retries included; `timeout` bounds each try.
    pub async fn customize(
        &self,
        surface: &str,
        input: Value,
        parameters: Option<Value>,
        timeout: Duration,
        retry: bool,
        deadline: Option<Instant>,
    ) -> Result<Value, EngineError> {
        self.customize_with(surface, input, parameters, timeout, retry, deadline, false)
            .await
    }

    /// [`Client::customize`], with `oss_resolve`: send `X-DashScope-OssResourceResolve:
    /// enable` (the input names an `oss://` temporary upload, §6.2).
    #[allow(clippy::too_many_arguments)]
    pub async fn customize_with(
        &self,
        surface: &str,
        input: Value,
        parameters: Option<Value>,
        timeout: Duration,
        retry: bool,
        deadline: Option<Instant>,
        oss_resolve: bool,
    ) -> Result<Value, EngineError> {
        let mut body = json!({"model": surface, "input": input});
        if let Some(p) = parameters {
            body["parameters"] = p;
        }
        let body = serde_json::to_vec(&body).map_err(|e| EngineError::Protocol(e.to_string()))?;
        let tuning = &self.settings.tuning;
        let mut attempt = 1;
        loop {
            let result = self
                .customize_once(&body, timeout, deadline, oss_resolve)
                .await;
            let error = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let delay = backoff(tuning, attempt);
            let in_time = deadline.is_none_or(|d| Instant::now() + delay < d);
            if !(retry && error.is_retryable() && attempt < tuning.max_attempts && in_time) {
                return Err(error);
            }
            tracing::info!(
                surface,
                attempt,
                error = %crate::error::chain(&error),
                "customization call failed; retrying"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn customize_once(
        &self,
        body: &[u8],
        timeout: Duration,
        deadline: Option<Instant>,
        oss_resolve: bool,
    ) -> Result<Value, EngineError> {
        let url = format!("{}{}", self.settings.base_url, CUSTOMIZATION_PATH);
        let mut request = self
            .http
            .post(&url)
            .bearer_auth(self.settings.api_key.expose_secret())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body.to_vec());
        if let Some(ws) = &self.settings.workspace_id {
            request = request.header("X-DashScope-WorkSpace", ws);
        }
        if oss_resolve {
            request = request.header("X-DashScope-OssResourceResolve", "enable");
        }
        let mut until = Instant::now() + timeout;
        if let Some(d) = deadline {
            until = until.min(d);
        }
        read_json(request, until, timeout).await
    }

    /// Upload `bytes` to DashScope's temporary storage (§6.2, the second way; PY-OSS): ask
    /// `GET {base}/uploads?action=getPolicy&model={surface}` for a policy, POST the file as a
    /// form to its `upload_host`, and return `oss://{upload_dir}/{file_name}`, which the
    /// surface resolves when the create carries `X-DashScope-OssResourceResolve: enable`.
    pub async fn upload_temporary(
        &self,
        surface: &str,
        file_name: &str,
        mime: &str,
        bytes: Vec<u8>,
        deadline: Instant,
    ) -> Result<String, EngineError> {
        let timeout = Duration::from_secs(60);
        let until = deadline.min(Instant::now() + timeout);
        let mut request = self
            .http
            // `surface` is one of three fixed ASCII names: no escaping needed.
            .get(format!(
                "{}/uploads?action=getPolicy&model={surface}",
                self.settings.base_url
            ))
            .bearer_auth(self.settings.api_key.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(ws) = &self.settings.workspace_id {
            request = request.header("X-DashScope-WorkSpace", ws);
        }
        let policy = read_json(request, until, timeout).await?;
        let data = policy
            .get("data")
            .or_else(|| policy.get("output"))
            .filter(|d| d.is_object())
            .ok_or_else(|| EngineError::Protocol("the upload policy has no data".to_owned()))?;
        let field = |k: &str| -> Result<String, EngineError> {
            match data.get(k) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(Value::Bool(b)) => Ok(b.to_string()),
                Some(Value::Number(n)) => Ok(n.to_string()),
                _ => Err(EngineError::Protocol(format!(
                    "the upload policy has no {k}"
                ))),
            }
        };
        let host = field("upload_host")?;
        if !(host.starts_with("https://") || host.starts_with("http://")) {
            return Err(EngineError::Protocol(
                "the upload policy's upload_host is not an http(s) URL".to_owned(),
            ));
        }
        let key = format!("{}/{file_name}", field("upload_dir")?);
        let boundary = format!("herald{:032x}", rand::random::<u128>());
        let mut form = Vec::with_capacity(bytes.len() + 2048);
        let mut text = |name: &str, value: &str| {
            form.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                )
                .as_bytes(),
            );
        };
        text("OSSAccessKeyId", &field("oss_access_key_id")?);
        text("Signature", &field("signature")?);
        text("policy", &field("policy")?);
        text("key", &key);
        text("x-oss-object-acl", &field("x_oss_object_acl")?);
        text("x-oss-forbid-overwrite", &field("x_oss_forbid_overwrite")?);
        text("success_action_status", "200");
        text("x-oss-content-type", mime);
        form.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\nContent-Type: {mime}\r\n\r\n"
            )
            .as_bytes(),
        );
        form.extend_from_slice(&bytes);
        form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let upload = self
            .http
            .post(&host)
            .header(
                reqwest::header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(form);
        let response = tokio::time::timeout_at(until, upload.send())
            .await
            .map_err(|_| timed_out(timeout))?
            .map_err(|e| EngineError::Transport(Box::new(e.without_url())))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(EngineError::Api {
                status,
                code: Some("UploadFailed".to_owned()),
                message: format!("the temporary upload answered HTTP {status}"),
                request_id: None,
            });
        }
        Ok(format!("oss://{key}"))
    }
}

fn timed_out(timeout: Duration) -> EngineError {
    EngineError::Transport(Box::new(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no complete answer from upstream within {timeout:?}"),
    )))
}

/// Send `request` and read its JSON answer; an error when the status is not 2xx or the body
/// carries a non-empty `code`.
async fn read_json(
    request: reqwest::RequestBuilder,
    until: Instant,
    timeout: Duration,
) -> Result<Value, EngineError> {
    let timed_out = || timed_out(timeout);
    {
        let mut response = tokio::time::timeout_at(until, request.send())
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| EngineError::Transport(Box::new(e.without_url())))?;
        let status = response.status().as_u16();
        let header_request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut bytes = Vec::new();
        loop {
            let chunk = tokio::time::timeout_at(until, response.chunk())
                .await
                .map_err(|_| timed_out())?
                .map_err(|e| EngineError::Transport(Box::new(e.without_url())))?;
            let Some(chunk) = chunk else { break };
            if bytes.len() + chunk.len() > MAX_BODY {
                return Err(EngineError::Protocol(
                    "customization response body too large".to_owned(),
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        if let Some(v) = &parsed
            && let Some(EngineError::Api {
                status: s,
                code,
                message,
                request_id,
            }) = family::error_in(v, status, false)
        {
            return Err(EngineError::Api {
                status: s,
                code,
                message,
                request_id: request_id.or(header_request_id),
            });
        }
        if !(200..300).contains(&status) {
            return Err(EngineError::Api {
                status,
                code: None,
                message: format!("HTTP {status} without a DashScope error body"),
                request_id: header_request_id,
            });
        }
        match parsed {
            Some(v @ Value::Object(_)) => Ok(v),
            _ => Err(EngineError::Protocol(
                "customization response body is not a JSON object".to_owned(),
            )),
        }
    }
}
