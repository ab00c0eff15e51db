//! Saving and loading a key file: **the only I/O in this crate**.
//!
//! Both binaries (`fogd` for the server identity, `fogconnect` for a node's) need exactly the same
//! rules, and the rules are security decisions, so they live here once, tested, rather than twice
//! in the binaries: the file is created with mode 0600 and never overwritten, and a file that group
//! or others may read is refused. This touches the file system only, never a socket, a thread, the
//! clock or the OS random source, and no state machine calls it. Unix only (the mode bits are
//! the whole point); other platforms use [`KeyPair::to_key_file`] and their own ACLs.
//!
//! The format is [`KeyPair::to_key_file`]'s three lines of text.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;

use zeroize::Zeroizing;

use crate::identity::{KeyPair, KeyPairError};

/// Why a key file could not be saved or loaded.
#[derive(Debug)]
pub enum KeyFileError {
    /// The file system refused (includes "already exists" on save).
    Io(io::Error),
    /// Group or others may read or write the file: its mode is shown. `chmod 600` it.
    Permissions(u32),
    /// Not a regular file.
    NotAFile,
    /// The contents are not a key file.
    Format(KeyPairError),
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyFileError::Io(e) => write!(f, "key file: {e}"),
            KeyFileError::Permissions(mode) => write!(
                f,
                "key file is accessible by group or others (mode {mode:04o}); run `chmod 600` on it"
            ),
            KeyFileError::NotAFile => f.write_str("key file is not a regular file"),
            KeyFileError::Format(e) => write!(f, "key file: {e}"),
        }
    }
}

impl std::error::Error for KeyFileError {}

impl From<io::Error> for KeyFileError {
    fn from(e: io::Error) -> Self {
        KeyFileError::Io(e)
    }
}

/// Writes `key` to a new file at `path` with mode 0600. Fails if the file exists: an identity is
/// never silently replaced.
pub fn save(path: &Path, key: &KeyPair) -> Result<(), KeyFileError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(key.to_key_file().as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// Reads the key at `path`, refusing a file whose mode lets group or others read or write it.
pub fn load(path: &Path) -> Result<KeyPair, KeyFileError> {
    let file = fs::File::open(path)?;
    // The descriptor's metadata, not the path's: no window between check and read.
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(KeyFileError::NotAFile);
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions(mode));
    }
    let mut text = Zeroizing::new(String::new());
    // A key file is under 200 bytes; read a little more than that and let the parser refuse.
    file.take(4096).read_to_string(&mut text)?;
    KeyPair::from_key_file(&text).map_err(KeyFileError::Format)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("fog-signal-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn save_load_and_permissions() {
        let dir = temp_dir("keyfile");
        let path = dir.join("id.key");
        let key = KeyPair::from_seed(&[42; 32]);
        save(&path, &key).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(load(&path).unwrap().peer_id(), key.peer_id());

        // Never overwritten.
        assert!(matches!(save(&path, &key), Err(KeyFileError::Io(_))));

        // Readable by the group: refused with a clear message.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, KeyFileError::Permissions(0o640)));
        assert!(err.to_string().contains("chmod 600"));

        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "garbage").unwrap();
        assert!(matches!(load(&path), Err(KeyFileError::Format(_))));
        assert!(load(&dir).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
