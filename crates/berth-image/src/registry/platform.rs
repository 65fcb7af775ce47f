//! Choosing a platform's manifest from an index (OCI image index or docker manifest list;
//! both have the same shape).

use oci_spec::image::{Descriptor, ImageIndex};

use super::RegistryError;

/// The platform berth runs on, in Go's names (what image indexes use):
/// `("linux", "amd64", None)`, `("linux", "arm64", None)`, `("linux", "arm", Some("v7"))`.
pub fn host_platform() -> (&'static str, &'static str, Option<&'static str>) {
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    };
    let (arch, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "x86" => ("386", None),
        "aarch64" => ("arm64", None),
        // 32-bit arm Linux distributions target armv7 (armhf) nearly always.
        "arm" => ("arm", Some("v7")),
        "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
        "powerpc64" => ("ppc64", None),
        "mips64" if cfg!(target_endian = "little") => ("mips64le", None),
        "mips" if cfg!(target_endian = "little") => ("mipsle", None),
        "loongarch64" => ("loong64", None),
        other => (other, None),
    };
    (os, arch, variant)
}

/// Normalized (arch, variant): aliases mapped to Go names and default variants dropped
/// (arm64/v8 is arm64, amd64/v1 is amd64, arm without variant is arm/v7), as containerd does.
fn normalize(arch: &str, variant: Option<&str>) -> (String, Option<String>) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant
        .filter(|v| !v.is_empty())
        .map(|v| v.to_ascii_lowercase());
    match arch.as_str() {
        "x86_64" | "x86-64" | "amd64" => {
            let v = variant.filter(|v| v != "v1");
            ("amd64".into(), v)
        }
        "i386" | "386" => ("386".into(), None),
        "aarch64" | "arm64" => {
            let v = variant.filter(|v| v != "v8" && v != "8");
            ("arm64".into(), v)
        }
        "armhf" => ("arm".into(), Some("v7".into())),
        "armel" => ("arm".into(), Some("v6".into())),
        "arm" => {
            let v = match variant.as_deref() {
                None | Some("7") => "v7".to_string(),
                Some("5") => "v5".to_string(),
                Some("6") => "v6".to_string(),
                Some("8") => "v8".to_string(),
                Some(v) => v.to_string(),
            };
            ("arm".into(), Some(v))
        }
        _ => (arch, variant),
    }
}

/// "v7" → 7.
fn variant_level(v: &str) -> Option<u32> {
    v.strip_prefix('v')?.parse().ok()
}

/// How well a candidate fits (lower is better), or None if it cannot run. On arm and amd64
/// older variants run on newer CPUs (arm/v7 runs v6 and v5; amd64/v3 runs v2 and v1).
fn fit(want: &(String, Option<String>), have: &(String, Option<String>)) -> Option<u32> {
    if want.0 != have.0 {
        return None;
    }
    if want.1 == have.1 {
        return Some(0);
    }
    if want.0 == "arm" || want.0 == "amd64" {
        // amd64 without variant is v1; arm always has one after normalizing.
        let level = |v: &Option<String>| match v {
            None => Some(1),
            Some(v) => variant_level(v),
        };
        let (w, h) = (level(&want.1)?, level(&have.1)?);
        if h <= w {
            return Some(w - h);
        }
    }
    None
}

fn platform_name(os: &str, arch: &str, variant: Option<&str>) -> String {
    match variant {
        Some(v) if !v.is_empty() => format!("{os}/{arch}/{v}"),
        _ => format!("{os}/{arch}"),
    }
}

/// The descriptor of the manifest for `os`/`arch`/`variant` in an index. With several fits,
/// the exact variant wins, then the closest older one, then the first listed. Entries
/// without a platform, and attestation manifests (`unknown/unknown`), are never chosen.
pub fn select_platform(
    index_bytes: &[u8],
    os: &str,
    arch: &str,
    variant: Option<&str>,
) -> Result<Descriptor, RegistryError> {
    let index: ImageIndex =
        serde_json::from_slice(index_bytes).map_err(|e| RegistryError::BadIndex {
            reason: e.to_string(),
        })?;
    let want = normalize(arch, variant);
    let mut best: Option<(u32, &Descriptor)> = None;
    let mut available: Vec<String> = Vec::new();
    for d in index.manifests() {
        let Some(p) = d.platform() else { continue };
        let (d_os, d_arch) = (p.os().to_string(), p.architecture().to_string());
        if d_os == "unknown" || d_arch == "unknown" {
            continue;
        }
        let name = platform_name(&d_os, &d_arch, p.variant().as_deref());
        if !available.contains(&name) {
            available.push(name);
        }
        if !d_os.eq_ignore_ascii_case(os) {
            continue;
        }
        let have = normalize(&d_arch, p.variant().as_deref());
        if let Some(score) = fit(&want, &have) {
            if best.is_none_or(|(s, _)| score < s) {
                best = Some((score, d));
            }
        }
    }
    match best {
        Some((_, d)) => Ok(d.clone()),
        None => Err(RegistryError::NoMatchingPlatform {
            wanted: platform_name(os, arch, variant),
            available,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(entries: &[(&str, &str, Option<&str>)]) -> Vec<u8> {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .enumerate()
            .map(|(i, (os, arch, variant))| {
                let mut p = serde_json::json!({"os": os, "architecture": arch});
                if let Some(v) = variant {
                    p["variant"] = serde_json::json!(v);
                }
                serde_json::json!({
                    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "digest": format!("sha256:{:064x}", i + 1),
                    "size": 100,
                    "platform": p,
                })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
            "manifests": manifests,
        }))
        .unwrap()
    }

    fn pick(idx: &[u8], os: &str, arch: &str, variant: Option<&str>) -> Option<usize> {
        select_platform(idx, os, arch, variant).ok().map(|d| {
            let hex = d.digest().to_string();
            usize::from_str_radix(&hex[hex.len() - 8..], 16).unwrap() - 1
        })
    }

    #[test]
    fn picks_exact_and_compatible_variants() {
        let idx = index(&[
            ("linux", "amd64", None),
            ("linux", "arm", Some("v6")),
            ("linux", "arm", Some("v7")),
            ("linux", "arm64", Some("v8")),
            ("unknown", "unknown", None),
            ("windows", "amd64", None),
        ]);
        assert_eq!(pick(&idx, "linux", "amd64", None), Some(0));
        assert_eq!(pick(&idx, "linux", "x86_64", None), Some(0));
        assert_eq!(pick(&idx, "linux", "amd64", Some("v3")), Some(0));
        assert_eq!(pick(&idx, "linux", "arm64", None), Some(3));
        assert_eq!(pick(&idx, "linux", "aarch64", Some("v8")), Some(3));
        assert_eq!(pick(&idx, "linux", "arm", Some("v7")), Some(2));
        assert_eq!(pick(&idx, "linux", "arm", None), Some(2));
        assert_eq!(pick(&idx, "linux", "arm", Some("v6")), Some(1));
        assert_eq!(pick(&idx, "linux", "arm", Some("v5")), None);
        assert_eq!(pick(&idx, "windows", "amd64", None), Some(5));
        // A newer variant never runs on an older CPU.
        let idx = index(&[("linux", "amd64", Some("v3"))]);
        assert_eq!(pick(&idx, "linux", "amd64", None), None);
        assert_eq!(pick(&idx, "linux", "amd64", Some("v4")), Some(0));
    }

    #[test]
    fn error_lists_available() {
        let idx = index(&[
            ("linux", "arm64", Some("v8")),
            ("linux", "arm", Some("v7")),
            ("unknown", "unknown", None),
        ]);
        let e = select_platform(&idx, "linux", "s390x", None).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, RegistryError::NoMatchingPlatform { .. }));
        assert!(msg.contains("linux/s390x"), "{msg}");
        assert!(msg.contains("linux/arm64/v8, linux/arm/v7"), "{msg}");
        assert!(!msg.contains("unknown"), "{msg}");
        assert!(matches!(
            select_platform(b"not json", "linux", "amd64", None),
            Err(RegistryError::BadIndex { .. })
        ));
    }

    #[test]
    fn host_platform_uses_go_names() {
        let (os, arch, _) = host_platform();
        assert_eq!(os, "linux");
        assert!(!arch.is_empty() && arch != "x86_64" && arch != "aarch64");
    }
}
