//! `fogconnect id`: the peer ID of a key file, the identity `serve`, `connect`, `send`, `recv`,
//! `listen` and `offer` take with `--key`. The file is created (mode 0600, by fog-signal's
//! `keyfile`) when missing, so a first `fogconnect id` makes the identity and every later one
//! shows the same ID.

use std::path::PathBuf;

use serde_json::json;

use crate::cli::IdArgs;
use crate::peer::identity;

pub(crate) fn run(args: &IdArgs) -> Result<(), String> {
    let path = match &args.key {
        Some(path) => path.clone(),
        None => default_path()?,
    };
    let created = !path.exists();
    if created {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
    }
    // Loaded, or created when missing, exactly as the other commands' --key does.
    let key = identity(Some(&path))?;
    let peer = key.peer_id();
    if args.json {
        println!(
            "{}",
            json!({"peer": peer.to_string(), "key": path.display().to_string(), "created": created})
        );
    } else {
        if created {
            eprintln!("created {} (mode 0600)", path.display());
        }
        println!("{peer}");
    }
    Ok(())
}

/// `$XDG_CONFIG_HOME/fogconnect/identity.key`, or `~/.config/fogconnect/identity.key` (the XDG
/// base directory default).
fn default_path() -> Result<PathBuf, String> {
    let config = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => PathBuf::from(home).join(".config"),
            None => return Err("neither XDG_CONFIG_HOME nor HOME is set: give --key FILE".into()),
        },
    };
    Ok(config.join("fogconnect").join("identity.key"))
}
