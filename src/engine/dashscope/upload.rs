//! DashScope's temporary storage for clone samples that cannot travel inline: a policy from
//! `GET {base}/uploads?action=getPolicy&model={surface}`, then a form POST of the file to the
//! policy's upload host, giving an `oss://` URL that the customization endpoint resolves when
//! asked to (`X-DashScope-OssResourceResolve: enable`).
//!
//! It must not decide when to upload (the custom-voice manager does, after a refused data URI)
//! and must not send the API key to the upload host, which is not DashScope's API.

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::{
    Client,
    custom::{read_json, timed_out},
};
use crate::{engine::EngineError, voices::Surface};

impl Client {
    /// Upload `bytes` to DashScope's temporary storage: ask
    /// `GET {base}/uploads?action=getPolicy&model={surface}` for a policy, POST the file as a
    /// form to its `upload_host`, and return `oss://{upload_dir}/{file_name}`, which the
    /// surface resolves when the create carries `X-DashScope-OssResourceResolve: enable`.
    pub async fn upload_temporary(
        &self,
        surface: Surface,
        file_name: &str,
        mime: &str,
        bytes: Vec<u8>,
        deadline: Instant,
    ) -> Result<String, EngineError> {
        let timeout = Duration::from_secs(60);
        let until = deadline.min(Instant::now() + timeout);
        let request = self
            // `surface` is one of three fixed ASCII names: no escaping needed.
            .get(&format!(
                "/uploads?action=getPolicy&model={}",
                surface.model()
            ))
            .header(reqwest::header::ACCEPT, "application/json");
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
        // The upload host is not DashScope's API: no key, no workspace.
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
