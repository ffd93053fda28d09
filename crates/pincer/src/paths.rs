//! Where things live: the state dir (`--state-dir`, then `PINCER_STATE_DIR`, then `~/.pincer`)
//! and the config file (`--config`, then `PINCER_CONFIG_PATH`, then `<state>/pincer.json`).

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Resolve the state dir.
pub fn state_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("PINCER_STATE_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".pincer")
}

/// Resolve the config path.
pub fn config_path(flag: Option<&Path>, state: &Path) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("PINCER_CONFIG_PATH").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    state.join("pincer.json")
}

/// Create the state dir (mode 0700 on Unix) if missing.
pub fn ensure_state_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create state dir {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

/// The generated-token file.
pub fn token_file(state: &Path) -> PathBuf {
    state.join("gateway.token")
}

/// The gateway token, if one is set: `gateway.auth.token` in the config, else
/// `PINCER_GATEWAY_TOKEN`, else `<state>/gateway.token`. The daemon and the CLI both use this
/// order, so a client always presents the token the gateway checks.
pub fn stored_token(config: Option<&pincer_core::config::Config>, state: &Path) -> Option<String> {
    let non_empty = |t: String| Some(t.trim().to_string()).filter(|t| !t.is_empty());
    config
        .and_then(|c| c.gateway.auth.token.clone())
        .and_then(non_empty)
        .or_else(|| std::env::var("PINCER_GATEWAY_TOKEN").ok().and_then(non_empty))
        .or_else(|| std::fs::read_to_string(token_file(state)).ok().and_then(non_empty))
}

/// The file a running gateway writes its address into (`host:port`), for the CLI.
pub fn address_file(state: &Path) -> PathBuf {
    state.join("gateway.addr")
}

/// Write `data` to `path` atomically (temp file in the same dir + rename), mode 0600.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = f.set_permissions(std::fs::Permissions::from_mode(0o600));
        }
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}
