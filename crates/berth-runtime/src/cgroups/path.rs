//! The OCI `cgroupsPath`, validated and turned into a cgroup path ("/a/b") within a
//! hierarchy, with runc's semantics:
//! - absolute "/x/y": that path from the root of every hierarchy;
//! - relative "x/y": below the runtime's own cgroup (per hierarchy on v1; on v2 below the
//!   *parent* of our cgroup, since ours already holds processes and cgroup v2 forbids
//!   enabling controllers for the children of a cgroup with processes);
//! - unset: relative "berth/<id>";
//! - with --systemd-cgroup, "slice:prefix:name": the cgroupfs path systemd gives the unit
//!   (`/machine.slice/libpod-abc.scope`), an absolute path. Only the path is computed:
//!   berth does not ask systemd to create the unit.

use super::CgroupError;

/// Slice of systemd-form paths with an empty slice (runc's default for a root runtime).
const DEFAULT_SLICE: &str = "system.slice";
/// Unit prefix when --systemd-cgroup is given without a cgroupsPath.
const DEFAULT_SCOPE_PREFIX: &str = "berth";

/// A validated cgroupsPath, not yet placed in a hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupPath {
    /// Normalised "/a/b", from the root of each hierarchy.
    Absolute(String),
    /// Normalised "a/b", below the runtime's own cgroup.
    Relative(String),
}

fn invalid(path: &str, reason: impl Into<String>) -> CgroupError {
    CgroupError::InvalidPath {
        path: path.to_string(),
        reason: reason.into(),
    }
}

/// Splits on '/', drops empty and "." components, refuses "..": a cgroupsPath must not
/// climb out of the hierarchy (or out of our own cgroup, for relative ones).
fn components<'a>(orig: &str, p: &'a str) -> Result<Vec<&'a str>, CgroupError> {
    let mut out = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(invalid(orig, "\"..\" components are not allowed")),
            c => out.push(c),
        }
    }
    if out.is_empty() {
        return Err(invalid(orig, "names no cgroup below the root"));
    }
    Ok(out)
}

fn check_name(orig: &str, what: &str, name: &str) -> Result<(), CgroupError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(invalid(
            orig,
            format!("{what} {name:?} is not a valid cgroup name"),
        ));
    }
    Ok(())
}

impl CgroupPath {
    /// Validates `cgroups_path` (None or "" means unset) for container `container_id`.
    pub fn parse(
        cgroups_path: Option<&str>,
        container_id: &str,
        systemd: bool,
    ) -> Result<Self, CgroupError> {
        let given = cgroups_path.filter(|p| !p.is_empty());
        if systemd {
            return match given {
                Some(p) => systemd_path(p).map(CgroupPath::Absolute),
                None => {
                    check_name(container_id, "container id", container_id)?;
                    let unit = format!("{DEFAULT_SCOPE_PREFIX}-{container_id}.scope");
                    Ok(CgroupPath::Absolute(format!(
                        "{}/{unit}",
                        expand_slice(DEFAULT_SLICE)?
                    )))
                }
            };
        }
        match given {
            None => {
                check_name(container_id, "container id", container_id)?;
                Ok(CgroupPath::Relative(format!("berth/{container_id}")))
            }
            Some(p) if p.starts_with('/') => Ok(CgroupPath::Absolute(format!(
                "/{}",
                components(p, p)?.join("/")
            ))),
            Some(p) => Ok(CgroupPath::Relative(components(p, p)?.join("/"))),
        }
    }

    /// The cgroup path in one hierarchy in which this process sits at `own`. `own` is
    /// ignored for absolute paths.
    pub fn resolve(&self, own: &str) -> String {
        match self {
            CgroupPath::Absolute(p) => p.clone(),
            CgroupPath::Relative(r) => {
                let base = own.trim_end_matches('/');
                format!("{base}/{r}")
            }
        }
    }

    /// [`resolve`](Self::resolve) for cgroup v2: relative paths go below the parent of our
    /// own cgroup (runc's choice; see the module comment).
    pub fn resolve_v2(&self, own: &str) -> String {
        let own = own.trim_end_matches('/');
        let parent = match own.rfind('/') {
            Some(i) => &own[..i],
            None => "",
        };
        self.resolve(if parent.is_empty() { "/" } else { parent })
    }
}

/// Resolves a cgroupsPath to a canonical absolute cgroup path ("/a/b") for a process sitting
/// at `own` in the hierarchy (v1 semantics; see [`CgroupPath::resolve_v2`] for v2).
pub fn resolve_cgroups_path(
    cgroups_path: Option<&str>,
    container_id: &str,
    systemd: bool,
    own: &str,
) -> Result<String, CgroupError> {
    Ok(CgroupPath::parse(cgroups_path, container_id, systemd)?.resolve(own))
}

/// "slice:prefix:name" → "/<expanded slice>/<prefix>-<name>.scope" (or ".../<name>" when
/// the name is itself a slice), as runc's systemd drivers compute it.
fn systemd_path(p: &str) -> Result<String, CgroupError> {
    let parts: Vec<&str> = p.split(':').collect();
    let [slice, prefix, name] = parts[..] else {
        return Err(invalid(
            p,
            "expected \"slice:prefix:name\" with --systemd-cgroup",
        ));
    };
    check_name(p, "unit name", name)?;
    if prefix.contains('/') || prefix == ".." {
        return Err(invalid(p, format!("prefix {prefix:?} is not valid")));
    }
    let slice = if slice.is_empty() {
        DEFAULT_SLICE
    } else {
        slice
    };
    let slice_path = expand_slice(slice)
        .map_err(|_| invalid(p, format!("slice {slice:?} is not a valid slice name")))?;
    let unit = if name.ends_with(".slice") {
        name.to_string()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    Ok(if slice_path == "/" {
        format!("/{unit}")
    } else {
        format!("{slice_path}/{unit}")
    })
}

/// systemd's slice nesting: "a-b-c.slice" → "/a.slice/a-b.slice/a-b-c.slice", "-.slice" → "/".
/// (runc's `ExpandSlice`.)
pub fn expand_slice(slice: &str) -> Result<String, CgroupError> {
    const SUFFIX: &str = ".slice";
    let bad = || invalid(slice, "not a valid systemd slice name");
    let Some(stem) = slice.strip_suffix(SUFFIX) else {
        return Err(bad());
    };
    if slice.contains('/') || stem.is_empty() {
        return Err(bad());
    }
    if stem == "-" {
        return Ok("/".into());
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for component in stem.split('-') {
        // "a--b.slice" and "-a.slice" are not slice names.
        if component.is_empty() {
            return Err(bad());
        }
        path.push('/');
        path.push_str(&prefix);
        path.push_str(component);
        path.push_str(SUFFIX);
        prefix.push_str(component);
        prefix.push('-');
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(p: Option<&str>, systemd: bool) -> Result<CgroupPath, CgroupError> {
        CgroupPath::parse(p, "c1", systemd)
    }

    #[test]
    fn absolute_and_relative() {
        assert_eq!(
            parse(Some("/x/y"), false).unwrap(),
            CgroupPath::Absolute("/x/y".into())
        );
        assert_eq!(
            parse(Some("//x/./y/"), false).unwrap(),
            CgroupPath::Absolute("/x/y".into())
        );
        assert_eq!(
            parse(Some("x/y"), false).unwrap(),
            CgroupPath::Relative("x/y".into())
        );
        assert_eq!(
            parse(None, false).unwrap(),
            CgroupPath::Relative("berth/c1".into())
        );
        assert_eq!(
            parse(Some(""), false).unwrap(),
            CgroupPath::Relative("berth/c1".into())
        );

        let own = "/process_api/abc";
        assert_eq!(parse(Some("/x/y"), false).unwrap().resolve(own), "/x/y");
        assert_eq!(
            parse(Some("x/y"), false).unwrap().resolve(own),
            "/process_api/abc/x/y"
        );
        assert_eq!(parse(Some("x/y"), false).unwrap().resolve("/"), "/x/y");
        assert_eq!(
            parse(None, false).unwrap().resolve(own),
            "/process_api/abc/berth/c1"
        );
        assert_eq!(
            resolve_cgroups_path(Some("a"), "c1", false, "/u/").unwrap(),
            "/u/a"
        );
    }

    #[test]
    fn v2_relative_uses_parent_of_own() {
        let p = parse(Some("x"), false).unwrap();
        assert_eq!(p.resolve_v2("/user.slice/session-3.scope"), "/user.slice/x");
        assert_eq!(p.resolve_v2("/session.scope"), "/x");
        assert_eq!(p.resolve_v2("/"), "/x");
        assert_eq!(
            parse(Some("/abs"), false).unwrap().resolve_v2("/a/b"),
            "/abs"
        );
    }

    #[test]
    fn rejects_dotdot_and_empty() {
        for bad in ["/x/../y", "..", "a/..", "/", "//", "./."] {
            let e = parse(Some(bad), false).unwrap_err();
            assert!(matches!(e, CgroupError::InvalidPath { .. }), "{bad}: {e}");
            assert!(e.to_string().starts_with("invalid cgroupsPath"), "{e}");
        }
        assert!(CgroupPath::parse(None, "", false).is_err());
        assert!(CgroupPath::parse(None, "..", false).is_err());
        assert!(CgroupPath::parse(None, "a/b", false).is_err());
    }

    #[test]
    fn systemd_form() {
        let abs = |p: &str| parse(Some(p), true).unwrap();
        assert_eq!(
            abs("machine.slice:libpod:abc"),
            CgroupPath::Absolute("/machine.slice/libpod-abc.scope".into())
        );
        assert_eq!(
            abs(":docker:1234"),
            CgroupPath::Absolute("/system.slice/docker-1234.scope".into())
        );
        assert_eq!(
            abs("a-b.slice:p:n"),
            CgroupPath::Absolute("/a.slice/a-b.slice/p-n.scope".into())
        );
        assert_eq!(
            abs("-.slice:p:n"),
            CgroupPath::Absolute("/p-n.scope".into())
        );
        assert_eq!(
            abs("system.slice::n"),
            CgroupPath::Absolute("/system.slice/n.scope".into())
        );
        assert_eq!(
            abs("user.slice:p:my.slice"),
            CgroupPath::Absolute("/user.slice/my.slice".into())
        );
        assert_eq!(
            parse(None, true).unwrap(),
            CgroupPath::Absolute("/system.slice/berth-c1.scope".into())
        );
        // Systemd paths are absolute: the runtime's own cgroup does not matter.
        assert_eq!(
            abs("machine.slice:libpod:abc").resolve("/x"),
            "/machine.slice/libpod-abc.scope"
        );

        for bad in [
            "/x/y",
            "a:b",
            "a.slice:p:",
            "a.slice:p:..",
            "a.slice:p:x/y",
            "nope:p:n",
            "a--b.slice:p:n",
            "a.slice:../x:n",
            "a:b:c:d",
        ] {
            let e = parse(Some(bad), true).unwrap_err();
            assert!(matches!(e, CgroupError::InvalidPath { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn expand_slice_like_runc() {
        assert_eq!(expand_slice("system.slice").unwrap(), "/system.slice");
        assert_eq!(
            expand_slice("test-a-b.slice").unwrap(),
            "/test.slice/test-a.slice/test-a-b.slice"
        );
        assert_eq!(expand_slice("-.slice").unwrap(), "/");
        for bad in [
            ".slice",
            "-test.slice",
            "test--a.slice",
            "test.slice/x.slice",
            "test",
            "test-.slice",
        ] {
            assert!(expand_slice(bad).is_err(), "{bad}");
        }
    }
}
