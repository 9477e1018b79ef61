//! Default locations (the unix socket, the cache and state directories) from systemd's and the
//! XDG variables, and reading secret files.
//!
//! Everything here reads an [`Env`] snapshot, never the process environment, and nothing here
//! creates or writes anything (`check-config` runs this code and must leave no trace; `serve`
//! creates the socket's directory when it binds).

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

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
/// `/run/herald/herald.sock` when that directory exists or this process may create it, else
/// `$XDG_RUNTIME_DIR/herald/herald.sock`.
pub fn default_socket_path(env: &Env) -> Option<PathBuf> {
    if let Some(dirs) = env.get(ENV_RUNTIME_DIRECTORY) {
        return Some(Path::new(first_dir(dirs)).join(SOCKET_FILE_NAME));
    }
    let system = Path::new(SYSTEM_RUNTIME_DIR);
    if system.is_dir() || system.parent().is_some_and(may_create_in) {
        return Some(system.join(SOCKET_FILE_NAME));
    }
    env.get(ENV_XDG_RUNTIME_DIR)
        .map(|dir| Path::new(dir).join("herald").join(SOCKET_FILE_NAME))
}

/// Whether this process may create an entry in directory `dir`, judged from its owner and mode
/// without trying (root may; otherwise the owner with write permission, or anyone when the
/// directory is writable by all). Group write permission is not trusted: the process's groups
/// are not known without a system call. The effective user is the owner of `/proc/self`.
fn may_create_in(dir: &Path) -> bool {
    let (Ok(meta), Ok(me)) = (std::fs::metadata(dir), std::fs::metadata("/proc/self")) else {
        return false;
    };
    meta.is_dir()
        && (me.uid() == 0
            || (meta.uid() == me.uid() && meta.mode() & 0o200 != 0)
            || meta.mode() & 0o002 != 0)
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

/// The search path used when `PATH` is not set (systemd's default for services).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where `program` runs from, as a spawn would find it: itself when it names a path (has a
/// `/`), else the first executable file of that name in `$PATH`'s directories. `Err` says
/// where it looked.
pub(super) fn find_program(program: &Path, env: &Env) -> Result<PathBuf, String> {
    let executable =
        |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0);
    if program.components().count() > 1 || program.is_absolute() {
        return if executable(program) {
            Ok(program.to_owned())
        } else {
            Err(format!("{} is not an executable file", program.display()))
        };
    }
    let path = env.get("PATH").unwrap_or(DEFAULT_PATH);
    std::env::split_paths(path)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
        .ok_or_else(|| {
            format!(
                "{:?} is not an executable file in any PATH directory ({path})",
                program.display().to_string()
            )
        })
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
