//! `check-config`'s output: the effective configuration as TOML, then what was resolved from
//! it (where the key and token came from, the base URL, TLS, the cache directory).
//!
//! Every secret is masked: a key or token shows only its length and its source. This module
//! must not change the configuration or read anything.

use secrecy::ExposeSecret;

use super::{Config, MASK, TcpAuth};

/// A Wyoming listener as `wyoming.listen` writes it.
fn wyoming_addr(addr: &super::ListenAddr) -> String {
    match addr {
        super::ListenAddr::Tcp(a) => format!("tcp://{a}"),
        super::ListenAddr::Unix(p) => format!("unix://{}", p.display()),
    }
}

impl Config {
    /// The effective configuration as TOML, with every secret masked.
    pub fn render(&self) -> String {
        let mut raw = self.raw.clone();
        if raw.dashscope.api_key.is_some() {
            raw.dashscope.api_key = Some(MASK.to_owned());
        }
        if raw.server.auth_token.is_some() {
            raw.server.auth_token = Some(MASK.to_owned());
        }
        raw.server.listen = self.listen.iter().map(ToString::to_string).collect();
        raw.wyoming.listen = self.wyoming.listen.iter().map(wyoming_addr).collect();
        let mut text =
            toml::to_string_pretty(&raw).unwrap_or_else(|e| format!("# cannot render: {e}\n"));
        text.push_str("\n# resolved\n");
        text.push_str(&format!(
            "# dashscope api key: {}\n",
            match &self.dashscope {
                Some(d) => format!(
                    "set ({} characters, from {})",
                    d.api_key.expose_secret().chars().count(),
                    d.api_key_source
                ),
                None => "not set (cloud engines disabled; default model espeak-ng)".to_owned(),
            }
        ));
        text.push_str(&format!(
            "# dashscope base url: {}\n",
            self.dashscope_base_url
        ));
        text.push_str(&format!(
            "# tcp auth: {}\n",
            match &self.tcp_auth {
                TcpAuth::Token { token, source } => format!(
                    "bearer token ({} characters, from {source})",
                    token.expose_secret().chars().count()
                ),
                TcpAuth::InsecureLoopbackOnly => "none (--insecure-no-auth, loopback only)".into(),
                TcpAuth::Refuse => "no token: TCP listeners are refused".into(),
            }
        ));
        text.push_str(&format!(
            "# tls: {}\n",
            self.tls.as_ref().map_or("off".to_owned(), |t| format!(
                "on ({})",
                t.cert_path.display()
            ))
        ));
        text.push_str(&match &self.cache {
            Some(c) => format!("# cache directory: {}\n", c.directory.display()),
            None => format!(
                "# cache: disabled ({})\n",
                self.cache_off.as_deref().unwrap_or("off")
            ),
        });
        text
    }
}
