//! The credentials file, in podman's `auth.json` format (docker's `config.json` reads the
//! same): `{"auths": {"HOST": {"auth": base64("user:password")}}}`. Other keys of the file
//! (credHelpers, other hosts' entries and fields) are kept as they are.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use serde_json::{Map, Value};

use super::auth;
use super::{Credentials, RegistryError};

fn err(path: &Path, reason: impl Into<String>) -> RegistryError {
    RegistryError::Credentials {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The key of an `auths` entry reduced to a registry name: scheme and path dropped
/// ("https://index.docker.io/v1/" → "index.docker.io"), Docker Hub's names unified.
fn normalize_key(key: &str) -> String {
    let k = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => host,
    }
}

/// Whether an `auths` key is for the registry as a whole (not a repository-scoped entry
/// such as "quay.io/team", which podman also writes).
fn is_registry_key(key: &str) -> bool {
    let k = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    match k.split_once('/') {
        None => true,
        // docker's legacy "https://index.docker.io/v1/" style.
        Some((_, path)) => matches!(path.trim_end_matches('/'), "" | "v1" | "v2"),
    }
}

/// Reads the file as a JSON object; a missing file is an empty one.
fn read_doc(path: &Path) -> Result<Option<Map<String, Value>>, RegistryError> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(path, format!("reading: {e}"))),
    };
    if data.iter().all(u8::is_ascii_whitespace) {
        return Ok(Some(Map::new()));
    }
    match serde_json::from_slice::<Value>(&data) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err(err(path, "not a json object")),
        Err(e) => Err(err(path, format!("invalid json: {e}"))),
    }
}

/// The credentials stored for `registry` ("host[:port]"), if any. An exact key wins over
/// an equivalent one ("https://host/v1/", Docker Hub's aliases). A missing file is no
/// credentials.
pub fn load_credentials(path: &Path, registry: &str) -> Result<Option<Credentials>, RegistryError> {
    let Some(doc) = read_doc(path)? else {
        return Ok(None);
    };
    let Some(auths) = doc.get("auths") else {
        return Ok(None);
    };
    let auths = auths
        .as_object()
        .ok_or_else(|| err(path, "\"auths\" is not an object"))?;
    let wanted = normalize_key(registry);
    let entry = auths.get(registry).or_else(|| {
        auths
            .iter()
            .find(|(k, _)| is_registry_key(k) && normalize_key(k) == wanted)
            .map(|(_, v)| v)
    });
    let Some(entry) = entry else {
        return Ok(None);
    };
    let auth = entry.get("auth").and_then(Value::as_str).unwrap_or("");
    if auth.is_empty() {
        // An entry with only an identity token or a helper reference: not ours to use.
        return Ok(None);
    }
    auth::decode_basic(auth)
        .map(Some)
        .map_err(|reason| err(path, format!("entry for {registry}: {reason}")))
}

/// Stores credentials for `registry`, replacing any entry for it; the file is written
/// whole to a temporary file, synced and renamed over the old one, mode 0600. Missing
/// parent directories are created (mode 0700).
pub fn save_credentials(path: &Path, registry: &str, c: &Credentials) -> Result<(), RegistryError> {
    if registry.is_empty() {
        return Err(RegistryError::Invalid("empty registry name".to_string()));
    }
    if c.username.is_empty() || c.username.contains(':') {
        return Err(RegistryError::Invalid(format!(
            "invalid user name {:?}: must be non-empty, without ':'",
            c.username
        )));
    }
    let mut doc = read_doc(path)?.unwrap_or_default();
    let auths = doc
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    let auths = auths
        .as_object_mut()
        .ok_or_else(|| err(path, "\"auths\" is not an object"))?;
    // Drop equivalent keys so that the new credentials are the ones read back.
    let wanted = normalize_key(registry);
    auths.retain(|k, _| k == registry || !(is_registry_key(k) && normalize_key(k) == wanted));
    let mut entry = match auths.remove(registry) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    entry.insert("auth".to_string(), Value::String(auth::encode_basic(c)));
    auths.insert(registry.to_string(), Value::Object(entry));
    write_atomic(path, &doc)
}

/// Removes the credentials for `registry` (and equivalent keys); false if there were none.
pub fn remove_credentials(path: &Path, registry: &str) -> Result<bool, RegistryError> {
    let Some(mut doc) = read_doc(path)? else {
        return Ok(false);
    };
    let Some(auths) = doc.get_mut("auths") else {
        return Ok(false);
    };
    let auths = auths
        .as_object_mut()
        .ok_or_else(|| err(path, "\"auths\" is not an object"))?;
    let wanted = normalize_key(registry);
    let before = auths.len();
    auths.retain(|k, _| k != registry && !(is_registry_key(k) && normalize_key(k) == wanted));
    if auths.len() == before {
        return Ok(false);
    }
    write_atomic(path, &doc)?;
    Ok(true)
}

fn write_atomic(path: &Path, doc: &Map<String, Value>) -> Result<(), RegistryError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| err(path, format!("creating {}: {e}", dir.display())))?;
    }
    let mut data =
        serde_json::to_vec_pretty(doc).map_err(|e| err(path, format!("encoding: {e}")))?;
    data.push(b'\n');
    let name = path
        .file_name()
        .ok_or_else(|| err(path, "not a file path"))?
        .to_string_lossy()
        .into_owned();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(".{name}.{}.{nanos}.tmp", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // The umask cannot widen 0600, but make sure anyway.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(&data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(err(path, format!("writing: {e}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(normalize_key("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(normalize_key("Quay.io"), "quay.io");
        assert!(is_registry_key("https://index.docker.io/v1/"));
        assert!(is_registry_key("localhost:5000"));
        assert!(!is_registry_key("quay.io/team"));
    }
}
