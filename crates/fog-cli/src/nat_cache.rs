//! `--nat-cache FILE`: the NAT behaviour a node found on each network it ran on, so that the
//! next start on the same network is ready at test I instead of waiting for discovery
//! (`fogconnect::NodeConfig::known_nats`).
//!
//! The file is a JSON array, one object per network (keyed by STUN server and local IP):
//! `{"stun": "IP:PORT", "local": "IP", "public": "IP", "nat": {...}}`, `nat` in fog-signal's
//! JSON form. At most [`MAX_NETWORKS`] are kept, the latest first. A missing file is an empty
//! one; a file that does not parse is reported and replaced at the next save. Writes go to a
//! temporary file renamed over the old one, so a reader never sees half a file.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use fog_signal::msg::NatBehaviour;
use fogconnect::KnownNat;
use serde_json::{Value, json};

/// Networks kept.
pub(crate) const MAX_NETWORKS: usize = 32;

/// The networks remembered in `path` (none when it does not exist).
pub(crate) fn load(path: &Path) -> Result<Vec<KnownNat>, String> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let value: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let entries = value
        .as_array()
        .ok_or_else(|| format!("{}: not a JSON array", path.display()))?;
    Ok(entries.iter().filter_map(entry).collect())
}

fn entry(value: &Value) -> Option<KnownNat> {
    let stun: SocketAddr = value["stun"].as_str()?.parse().ok()?;
    let local: IpAddr = value["local"].as_str()?.parse().ok()?;
    let public: IpAddr = value["public"].as_str()?.parse().ok()?;
    let nat: NatBehaviour = serde_json::from_value(value["nat"].clone()).ok()?;
    Some(KnownNat {
        stun,
        local,
        public,
        behaviour: nat.into(),
    })
}

/// Remembers `known` in `path`, in place of what was there for its network.
pub(crate) fn save(path: &Path, known: KnownNat) -> Result<(), String> {
    // A file that does not parse is replaced.
    let mut all = load(path).unwrap_or_default();
    all.retain(|k| (k.stun, k.local) != (known.stun, known.local));
    all.insert(0, known);
    all.truncate(MAX_NETWORKS);
    let array: Vec<Value> = all
        .iter()
        .map(|k| {
            json!({
                "stun": k.stun.to_string(),
                "local": k.local.to_string(),
                "public": k.public.to_string(),
                "nat": NatBehaviour::from(k.behaviour),
            })
        })
        .collect();
    let text = serde_json::to_string_pretty(&array).map_err(|e| e.to_string())?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&temporary, text).map_err(|e| format!("{}: {e}", temporary.display()))?;
    fs::rename(&temporary, path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use fog_core::nat::{Behaviour, Filtering, Mapping, PortPattern};

    use super::*;

    fn known(local: [u8; 4], ports: PortPattern) -> KnownNat {
        KnownNat {
            stun: "192.0.2.1:3478".parse().unwrap(),
            local: local.into(),
            public: [203, 0, 113, 5].into(),
            behaviour: Behaviour::Nat {
                mapping: Mapping::AddressDependent,
                filtering: Filtering::AddressAndPortDependent,
                ports,
                hairpinning: false,
            },
        }
    }

    #[test]
    fn networks_are_kept_one_each_latest_first_and_survive_a_reload() {
        let dir = std::env::temp_dir().join(format!("fog-nat-cache-{}", std::process::id()));
        let path = dir.join("sub").join("nat.json");
        assert_eq!(load(&path), Ok(Vec::new()), "no file: nothing remembered");
        let home = known([192, 168, 1, 2], PortPattern::Preserved);
        let office = known([10, 0, 0, 7], PortPattern::Sequential { delta: 1 });
        save(&path, home).unwrap();
        save(&path, office).unwrap();
        assert_eq!(load(&path).unwrap(), vec![office, home]);
        // The home network again, now seen otherwise: one entry for it, first.
        let home_now = known([192, 168, 1, 2], PortPattern::Random);
        save(&path, home_now).unwrap();
        assert_eq!(load(&path).unwrap(), vec![home_now, office]);
        for i in 0..40u8 {
            save(&path, known([10, 1, 0, i], PortPattern::Preserved)).unwrap();
        }
        assert_eq!(load(&path).unwrap().len(), MAX_NETWORKS);
        // A broken file is reported, and replaced by the next save.
        fs::write(&path, "{not json").unwrap();
        assert!(load(&path).is_err());
        save(&path, home).unwrap();
        assert_eq!(load(&path).unwrap(), vec![home]);
        let _ = fs::remove_dir_all(&dir);
    }
}
