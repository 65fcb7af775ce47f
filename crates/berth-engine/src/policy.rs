//! Which host paths `-v` may bind into a container.
//!
//! A bind mount of the host's credentials, kernel interfaces, boot files or any container
//! engine's state hands the container the host. The check works on what the path *is*,
//! not how it was spelled: the source is canonicalised (symlinks and `..` resolved on the
//! host, so `/tmp/x -> /etc` is caught), and every ancestor of the result is also compared
//! by device and inode with the sensitive paths (so a bind mount of /etc elsewhere, e.g.
//! `/mnt/etc`, is caught too).
//!
//! A source is refused when it is a sensitive path, lies inside one, or contains one (a
//! parent such as `/var` or `/run` would show the container what's below it). `/` only
//! matches itself and, as everything's parent, is caught by the "contains" rule.
//!
//! The table below is [`SENSITIVE_PATHS`]; `docs/security.md` ("Engine policy")
//! documents it for users.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::request::Bind;

/// One sensitive host path and why it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SensitivePath {
    pub path: &'static str,
    pub reason: &'static str,
}

const fn rule(path: &'static str, reason: &'static str) -> SensitivePath {
    SensitivePath { path, reason }
}

/// The sensitive host paths. Refused: the path itself, anything inside it, any parent.
pub const SENSITIVE_PATHS: &[SensitivePath] = &[
    rule("/", "/ is the whole host filesystem"),
    rule("/etc", "/etc holds host credentials and configuration"),
    rule(
        "/proc",
        "/proc exposes the host's processes and kernel settings",
    ),
    rule("/sys", "/sys exposes the host's kernel and devices"),
    rule("/dev", "/dev holds the host's device nodes"),
    rule("/boot", "/boot holds the host's kernel and boot loader"),
    rule("/root", "/root is the host root user's home"),
    rule("/usr", "/usr holds the host's programs and libraries"),
    rule(
        "/lib/modules",
        "/lib/modules holds the host's kernel modules",
    ),
    rule(
        "/var/lib/berth",
        "/var/lib/berth holds berth's images and container state",
    ),
    rule("/run/berth", "/run/berth holds berth's runtime state"),
    rule(
        "/var/run/docker.sock",
        "the docker socket gives control of the host's docker daemon",
    ),
    rule(
        "/run/docker.sock",
        "the docker socket gives control of the host's docker daemon",
    ),
    rule(
        "/var/lib/docker",
        "/var/lib/docker holds docker's images and containers",
    ),
    rule(
        "/run/containerd",
        "/run/containerd holds containerd's socket and runtime state",
    ),
    rule("/run/podman", "/run/podman holds podman's socket"),
    rule(
        "/var/lib/containers",
        "/var/lib/containers holds podman's and cri-o's images and containers",
    ),
    rule("/run/crio", "/run/crio holds cri-o's socket and state"),
    rule(
        "/var/run/crio",
        "/var/run/crio holds cri-o's socket and state",
    ),
];

#[derive(Debug, Error)]
pub enum PolicyError {
    #[error("refusing to mount {shown}: host path {relation} ({reason}); use --allow-sensitive-mount to override")]
    Sensitive {
        /// The source as given (and what it resolves to, if different).
        shown: String,
        path: PathBuf,
        rule: &'static str,
        relation: Relation,
        reason: &'static str,
    },
    #[error("bind mount source {path}: {source}")]
    Source {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How a bind source relates to a sensitive path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// The source is the sensitive path (or a bind mount of it).
    Is,
    /// The source is inside it.
    Inside,
    /// The source contains it.
    Contains,
}

impl std::fmt::Display for Relation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Relation::Is | Relation::Inside => "is sensitive",
            Relation::Contains => "contains a sensitive path",
        })
    }
}

/// A match of one source against the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub source: PathBuf,
    pub resolved: PathBuf,
    pub rule: &'static SensitivePath,
    pub relation: Relation,
}

fn shown(f: &Finding) -> String {
    if f.source == f.resolved {
        f.source.display().to_string()
    } else {
        format!(
            "{} (resolves to {})",
            f.source.display(),
            f.resolved.display()
        )
    }
}

/// (device, inode) of a path, following symlinks; None if it doesn't exist.
fn ident(p: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// Checks one canonical source path against the table; the first (most specific
/// relation first: is/inside, then contains) match wins.
fn classify(source: &Path, resolved: &Path) -> Option<Finding> {
    let finding = |rule: &'static SensitivePath, relation| Finding {
        source: source.to_path_buf(),
        resolved: resolved.to_path_buf(),
        rule,
        relation,
    };
    // The rule paths themselves may be symlinks on this host (/var/run -> /run, /lib ->
    // /usr/lib): compare against both spellings.
    let spellings = |r: &SensitivePath| {
        let raw = PathBuf::from(r.path);
        let canon = std::fs::canonicalize(&raw).ok();
        std::iter::once(raw).chain(canon)
    };
    for r in SENSITIVE_PATHS {
        for p in spellings(r) {
            if resolved == p {
                return Some(finding(r, Relation::Is));
            }
            // `/` only matches itself: everything is inside it.
            if r.path != "/" && resolved.starts_with(&p) {
                return Some(finding(r, Relation::Inside));
            }
        }
    }
    // The same directory reached another way (a bind mount of /etc at /mnt/etc): compare
    // the source and each of its ancestors by identity with each sensitive path.
    let ids: Vec<(&'static SensitivePath, (u64, u64))> = SENSITIVE_PATHS
        .iter()
        .filter(|r| r.path != "/")
        .filter_map(|r| ident(Path::new(r.path)).map(|id| (r, id)))
        .collect();
    for (depth, anc) in resolved.ancestors().enumerate() {
        if anc == Path::new("/") {
            break;
        }
        if let Some(id) = ident(anc) {
            if let Some((r, _)) = ids.iter().find(|(_, rid)| *rid == id) {
                let rel = if depth == 0 {
                    Relation::Is
                } else {
                    Relation::Inside
                };
                return Some(finding(r, rel));
            }
        }
    }
    for r in SENSITIVE_PATHS {
        for p in spellings(r) {
            if p.starts_with(resolved) {
                return Some(finding(r, Relation::Contains));
            }
        }
    }
    None
}

/// Canonicalises a bind source and checks it; Ok(None) if it is not sensitive.
pub fn check_path(source: &Path) -> Result<Option<Finding>, PolicyError> {
    let resolved = std::fs::canonicalize(source).map_err(|e| PolicyError::Source {
        path: source.to_path_buf(),
        source: e,
    })?;
    Ok(classify(source, &resolved))
}

/// Checks every bind source. Without `allow_sensitive` the first sensitive one is an error;
/// with it, each yields a warning instead. A missing source is an error either way (berth,
/// like podman, does not create host directories for -v).
pub fn check_binds(binds: &[Bind], allow_sensitive: bool) -> Result<Vec<String>, PolicyError> {
    checked_binds(binds, allow_sensitive).map(|(_, w)| w)
}

/// [`check_binds`], also returning the binds with their sources replaced by the canonical
/// paths that were checked. The spec must mount those: mounting the path as given would
/// let a symlink swapped in after the check redirect the mount.
pub fn checked_binds(
    binds: &[Bind],
    allow_sensitive: bool,
) -> Result<(Vec<Bind>, Vec<String>), PolicyError> {
    let mut warnings = Vec::new();
    let mut checked = Vec::with_capacity(binds.len());
    for b in binds {
        let resolved = std::fs::canonicalize(&b.source).map_err(|e| PolicyError::Source {
            path: b.source.clone(),
            source: e,
        })?;
        checked.push(Bind {
            source: resolved.clone(),
            ..b.clone()
        });
        let Some(f) = classify(&b.source, &resolved) else {
            continue;
        };
        if !allow_sensitive {
            return Err(PolicyError::Sensitive {
                shown: shown(&f),
                path: f.source,
                rule: f.rule.path,
                relation: f.relation,
                reason: f.rule.reason,
            });
        }
        warnings.push(format!(
            "mounting sensitive host path {} at {}{}: {} {} ({}); allowed by --allow-sensitive-mount",
            shown(&f),
            b.destination.display(),
            if b.readonly { " read-only" } else { "" },
            f.resolved.display(),
            match f.relation {
                Relation::Is => "is".to_string(),
                Relation::Inside => format!("is inside {}", f.rule.path),
                Relation::Contains => format!("contains {}", f.rule.path),
            },
            f.rule.reason,
        ));
    }
    Ok((checked, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{parse_volume, Propagation};

    fn bind(src: &Path) -> Bind {
        Bind {
            source: src.to_path_buf(),
            destination: PathBuf::from("/mnt"),
            readonly: false,
            propagation: Propagation::Rprivate,
        }
    }

    fn refused(src: &str) -> String {
        check_binds(&[bind(Path::new(src))], false)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_message_says_what_and_how_to_override() {
        assert_eq!(
            refused("/etc/passwd"),
            "refusing to mount /etc/passwd: host path is sensitive (/etc holds host credentials and configuration); use --allow-sensitive-mount to override"
        );
    }

    #[test]
    fn sensitive_paths_and_their_insides_are_refused() {
        for p in [
            "/",
            "/etc",
            "/etc/shadow",
            "/proc",
            "/proc/1",
            "/sys/kernel",
            "/dev",
            "/boot",
            "/root",
            "/usr/bin",
            "/usr",
        ] {
            if Path::new(p).exists() {
                let e = refused(p);
                assert!(e.starts_with(&format!("refusing to mount {p}")), "{p}: {e}");
            }
        }
        assert!(refused("/").contains("/ is the whole host filesystem"));
    }

    #[test]
    fn parents_of_sensitive_paths_are_refused() {
        // (/lib is not here: on merged-/usr hosts it resolves to /usr/lib, inside /usr.)
        for p in ["/var", "/run", "/var/lib"] {
            if Path::new(p).exists() {
                let e = refused(p);
                assert!(e.contains("contains a sensitive path"), "{p}: {e}");
            }
        }
    }

    #[test]
    fn symlinks_and_dotdot_are_resolved_first() {
        let d = tempfile::tempdir().unwrap();
        let link = d.path().join("x");
        std::os::unix::fs::symlink("/etc", &link).unwrap();
        let e = refused(link.to_str().unwrap());
        assert!(e.contains("(resolves to /etc)"), "{e}");
        let dotdot = d.path().join("../../../../../../../etc");
        assert!(refused(dotdot.to_str().unwrap()).contains("/etc holds host credentials"));
        // A symlinked file inside /etc.
        let f = d.path().join("pw");
        std::os::unix::fs::symlink("/etc/passwd", &f).unwrap();
        assert!(refused(f.to_str().unwrap()).contains("resolves to /etc/passwd"));
    }

    #[test]
    fn ordinary_paths_pass_and_missing_ones_fail() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        std::fs::create_dir(&data).unwrap();
        assert!(check_binds(&[bind(&data)], false).unwrap().is_empty());
        let e = check_binds(&[bind(&d.path().join("nope"))], true)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("bind mount source "), "{e}");
        assert!(e.contains("No such file"), "{e}");
    }

    #[test]
    fn allow_sensitive_turns_refusals_into_warnings() {
        let binds = [
            parse_volume("/etc:/host-etc:ro").unwrap(),
            parse_volume("/tmp:/t").unwrap(),
        ];
        let w = check_binds(&binds, true).unwrap();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("mounting sensitive host path /etc at /host-etc read-only"),
            "{}",
            w[0]
        );
        assert!(w[0].contains("--allow-sensitive-mount"));
    }

    #[test]
    fn a_bind_mount_of_a_sensitive_dir_is_caught_by_identity() {
        // In a thread of its own with a private mount namespace (unshare(CLONE_NEWNS) is
        // per thread), bind /etc at a harmless-looking path. Needs CAP_SYS_ADMIN: skipped
        // without it.
        let d = tempfile::tempdir().unwrap();
        let mnt = d.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let r = std::thread::spawn(move || {
            use nix::mount::{mount, MsFlags};
            if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).is_err() {
                return None;
            }
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .ok()?;
            mount(
                Some("/etc"),
                &mnt,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .ok()?;
            let dir = check_path(&mnt).unwrap();
            let file = check_path(&mnt.join("passwd")).unwrap();
            Some((dir, file))
        })
        .join()
        .unwrap();
        let Some((dir, file)) = r else {
            eprintln!("skipped: no privilege to bind-mount in a new mount namespace");
            return;
        };
        let dir = dir.expect("a bind mount of /etc is sensitive");
        assert_eq!((dir.rule.path, dir.relation), ("/etc", Relation::Is));
        let file = file.expect("a file in a bind mount of /etc is sensitive");
        assert_eq!((file.rule.path, file.relation), ("/etc", Relation::Inside));
    }

    #[test]
    fn the_table_is_well_formed() {
        for r in SENSITIVE_PATHS {
            assert!(r.path.starts_with('/'));
            assert!(
                r.reason.starts_with(r.path) || r.reason.starts_with("the "),
                "{r:?}"
            );
        }
    }
}
