//! Default locations (the unix socket, the cache and state directories) from systemd's and the
//! XDG variables, and reading secret files.
//!
//! Everything here reads an [`Env`] snapshot, never the process environment. The only side
//! effect is creating [`SYSTEM_RUNTIME_DIR`] when the default socket would go there; nothing
//! else is created or written.

use std::path::{Path, PathBuf};

use secrecy::SecretString;

use super::{
    ENV_CACHE_DIRECTORY, ENV_RUNTIME_DIRECTORY, ENV_STATE_DIRECTORY, ENV_XDG_CACHE_HOME,
    ENV_XDG_RUNTIME_DIR, Env, SOCKET_FILE_NAME, SYSTEM_RUNTIME_DIR,
};

/// The first directory of a systemd `:`-separated list (systemd passes several when several
/// are configured).
fn first_dir(dirs: &str) -> &str {
    dirs.split(':').next().unwrap_or(dirs)
}

/// The default unix socket: `$RUNTIME_DIRECTORY/herald.sock` (systemd), else
/// `/run/herald/herald.sock` when that directory exists or can be created, else
/// `$XDG_RUNTIME_DIR/herald/herald.sock`.
pub fn default_socket_path(env: &Env) -> Option<PathBuf> {
    if let Some(dirs) = env.get(ENV_RUNTIME_DIRECTORY) {
        return Some(Path::new(first_dir(dirs)).join(SOCKET_FILE_NAME));
    }
    let system = Path::new(SYSTEM_RUNTIME_DIR);
    if system.is_dir() || std::fs::create_dir_all(system).is_ok() {
        return Some(system.join(SOCKET_FILE_NAME));
    }
    env.get(ENV_XDG_RUNTIME_DIR)
        .map(|dir| Path::new(dir).join("herald").join(SOCKET_FILE_NAME))
}

/// Where a client looks for the daemon's socket: the first default location holding a socket.
pub fn client_socket_candidates(env: &Env) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(dirs) = env.get(ENV_RUNTIME_DIRECTORY) {
        out.push(Path::new(first_dir(dirs)).join(SOCKET_FILE_NAME));
    }
    out.push(Path::new(SYSTEM_RUNTIME_DIR).join(SOCKET_FILE_NAME));
    if let Some(dir) = env.get(ENV_XDG_RUNTIME_DIR) {
        out.push(Path::new(dir).join("herald").join(SOCKET_FILE_NAME));
    }
    out
}

/// The default cache directory: `$CACHE_DIRECTORY` (systemd), else `$XDG_CACHE_HOME/herald`,
/// else `$HOME/.cache/herald`.
pub fn default_cache_dir(env: &Env) -> Option<PathBuf> {
    if let Some(dirs) = env.get(ENV_CACHE_DIRECTORY) {
        return Some(PathBuf::from(first_dir(dirs)));
    }
    if let Some(xdg) = env.get(ENV_XDG_CACHE_HOME) {
        return Some(Path::new(xdg).join("herald"));
    }
    env.get("HOME")
        .map(|home| Path::new(home).join(".cache").join("herald"))
}

/// The default state directory: `$STATE_DIRECTORY` (systemd; the first of a `:` list), else
/// `$XDG_STATE_HOME/herald`, else `$HOME/.local/state/herald`.
pub fn default_state_dir(env: &Env) -> Option<PathBuf> {
    if let Some(dirs) = env.get(ENV_STATE_DIRECTORY) {
        return Some(PathBuf::from(first_dir(dirs)));
    }
    if let Some(xdg) = env.get("XDG_STATE_HOME") {
        return Some(Path::new(xdg).join("herald"));
    }
    env.get("HOME")
        .map(|home| Path::new(home).join(".local").join("state").join("herald"))
}

/// The trimmed content of a secret file (an API key, a token); empty is an error.
pub(super) fn read_secret_file(path: &Path) -> Result<SecretString, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let key = text.trim();
    if key.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(SecretString::from(key.to_owned()))
}
