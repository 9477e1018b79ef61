//! Finding and reading the configuration sources and merging them into one [`RawConfig`]:
//! the file (`--config`, `$HERALD_CONFIG` or [`DEFAULT_CONFIG_PATH`]), then the environment,
//! then the flags.
//!
//! A syntax error names its line and column but must never quote the source line (it could hold
//! a secret). Nothing here checks ranges or resolves paths; [`RawConfig::validate`] does.

use std::path::{Path, PathBuf};

use super::{
    ConfigError, DEFAULT_CONFIG_PATH, ENV_CONFIG, ENV_DASHSCOPE_API_KEY,
    ENV_DASHSCOPE_API_KEY_FILE, RawConfig,
    env::{ENV_KEYS, Env, Overrides, parse_value, set_key},
};

/// Where to read the configuration from.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// `--config`: this file must exist. `None`: `$HERALD_CONFIG`, else
    /// [`DEFAULT_CONFIG_PATH`] when it exists, else defaults only.
    pub config_path: Option<PathBuf>,
    /// Command-line overrides.
    pub overrides: Overrides,
}

/// Merge file, environment and flags, and deserialize (unknown keys rejected).
pub fn load_raw(options: &LoadOptions, env: &Env) -> Result<RawConfig, ConfigError> {
    let mut table = match config_file(options, env) {
        Some(path) => read_table(&path)?,
        None => toml::Table::new(),
    };
    // The environment's key (or key file) replaces every key source of the file: env > file.
    if (env.get(ENV_DASHSCOPE_API_KEY).is_some() || env.get(ENV_DASHSCOPE_API_KEY_FILE).is_some())
        && let Some(toml::Value::Table(d)) = table.get_mut("dashscope")
    {
        d.remove("api_key");
        d.remove("api_key_file");
    }
    for (var, key, kind) in ENV_KEYS {
        if let Some(value) = env.get(var) {
            set_key(&mut table, key, parse_value(var, value, *kind)?);
        }
    }
    let o = &options.overrides;
    if !o.listen.is_empty() {
        let list = o.listen.iter().cloned().map(toml::Value::String).collect();
        set_key(&mut table, "server.listen", toml::Value::Array(list));
    }
    if !o.wyoming_listen.is_empty() {
        let list = o
            .wyoming_listen
            .iter()
            .cloned()
            .map(toml::Value::String)
            .collect();
        set_key(&mut table, "wyoming.listen", toml::Value::Array(list));
    }
    if let Some(format) = &o.log_format {
        set_key(
            &mut table,
            "log.format",
            toml::Value::String(format.clone()),
        );
    }
    if let Some(level) = &o.log_level {
        set_key(&mut table, "log.level", toml::Value::String(level.clone()));
    }
    if let Some(addr) = &o.metrics_listen {
        set_key(
            &mut table,
            "server.metrics_listen",
            toml::Value::String(addr.clone()),
        );
    }
    if o.insecure_no_auth {
        set_key(
            &mut table,
            "server.insecure_no_auth",
            toml::Value::Boolean(true),
        );
    }
    if let Some(model) = &o.default_model {
        set_key(
            &mut table,
            "synthesis.default_model",
            toml::Value::String(model.clone()),
        );
    }
    if !o.http_listen.is_empty() {
        let list = o
            .http_listen
            .iter()
            .cloned()
            .map(toml::Value::String)
            .collect();
        set_key(&mut table, "http.listen", toml::Value::Array(list));
    }
    deserialize_table(table, "config")
}

/// Parse one TOML document (a config file's content) with unknown keys rejected.
pub fn parse_str(text: &str, origin: &Path) -> Result<RawConfig, ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| syntax_error(origin, text, &e))?;
    deserialize_table(table, &origin.display().to_string())
}

fn config_file(options: &LoadOptions, env: &Env) -> Option<PathBuf> {
    if let Some(path) = &options.config_path {
        return Some(path.clone());
    }
    if let Some(path) = env.get(ENV_CONFIG) {
        return Some(PathBuf::from(path));
    }
    let default = Path::new(DEFAULT_CONFIG_PATH);
    default.exists().then(|| default.to_owned())
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.parse()
        .map_err(|e: toml::de::Error| syntax_error(path, &text, &e))
}

/// A syntax error with its line and column but never the offending source line, which could
/// hold a secret (`api_key = "sk-...` with a missing quote).
fn syntax_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let position = e.span().map_or_else(String::new, |span| {
        let before = text.get(..span.start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!(" at line {line}, column {column}")
    });
    ConfigError::Syntax {
        path: path.to_owned(),
        message: format!("{}{position}", e.message().trim()),
    }
}

fn deserialize_table(table: toml::Table, origin: &str) -> Result<RawConfig, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        let message = e.into_inner().to_string();
        ConfigError::Key {
            origin: origin.to_owned(),
            key,
            message: message.trim().to_owned(),
        }
    })
}
