//! Manual argv parsing (clap would cost more resident pages than the rest of the monitor).

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

pub const USAGE: &str = "usage: berth-monitor --id ID --runtime PATH --runtime-root DIR \
--bundle DIR --dir STATE_DIR [--terminal] [--stdin] [--log-max-size BYTES] [--sync-fd N] \
[--oom-file PATH] [--exit-command PATH [ARG...]]";

pub const DEFAULT_LOG_MAX: u64 = 10 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub id: String,
    pub runtime: PathBuf,
    pub runtime_root: PathBuf,
    pub bundle: PathBuf,
    pub dir: PathBuf,
    pub terminal: bool,
    pub stdin: bool,
    /// 0 disables rotation.
    pub log_max_size: u64,
    pub sync_fd: Option<i32>,
    pub oom_file: Option<PathBuf>,
    /// Program and arguments; everything after `--exit-command`.
    pub exit_command: Option<Vec<OsString>>,
}

/// Parses the arguments after argv[0].
pub fn parse(argv: impl IntoIterator<Item = OsString>) -> Result<Args, String> {
    let mut it = argv.into_iter();
    let (mut id, mut runtime, mut root, mut bundle, mut dir) = (None, None, None, None, None);
    let mut a = Args {
        id: String::new(),
        runtime: PathBuf::new(),
        runtime_root: PathBuf::new(),
        bundle: PathBuf::new(),
        dir: PathBuf::new(),
        terminal: false,
        stdin: false,
        log_max_size: DEFAULT_LOG_MAX,
        sync_fd: None,
        oom_file: None,
        exit_command: None,
    };
    while let Some(arg) = it.next() {
        let name = arg.to_string_lossy().into_owned();
        let mut value = |what: &str| -> Result<OsString, String> {
            match it.next() {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err(format!("{what} needs a value")),
            }
        };
        match name.as_str() {
            "--id" => id = Some(value("--id")?),
            "--runtime" => runtime = Some(value("--runtime")?),
            "--runtime-root" => root = Some(value("--runtime-root")?),
            "--bundle" => bundle = Some(value("--bundle")?),
            "--dir" => dir = Some(value("--dir")?),
            "--terminal" => a.terminal = true,
            "--stdin" => a.stdin = true,
            "--log-max-size" => a.log_max_size = number(&value("--log-max-size")?, &name)?,
            "--sync-fd" => {
                let n = number(&value("--sync-fd")?, &name)?;
                a.sync_fd = Some(i32::try_from(n).map_err(|_| "--sync-fd: out of range")?);
            }
            "--oom-file" => a.oom_file = Some(value("--oom-file")?.into()),
            "--exit-command" => {
                let rest: Vec<OsString> = it.by_ref().collect();
                if rest.is_empty() || rest[0].is_empty() {
                    return Err("--exit-command needs a program".into());
                }
                a.exit_command = Some(rest);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let need = |v: Option<OsString>, what: &str| v.ok_or_else(|| format!("{what} is required"));
    let id = need(id, "--id")?;
    a.id = id
        .to_str()
        .filter(|s| !s.contains('/') && !s.starts_with('.'))
        .ok_or("--id: not a valid container id")?
        .to_string();
    a.runtime = need(runtime, "--runtime")?.into();
    a.runtime_root = need(root, "--runtime-root")?.into();
    a.bundle = need(bundle, "--bundle")?.into();
    a.dir = need(dir, "--dir")?.into();
    if !a.dir.is_absolute() || !a.bundle.is_absolute() || !a.runtime_root.is_absolute() {
        return Err("--dir, --bundle and --runtime-root must be absolute paths".into());
    }
    Ok(a)
}

fn number(v: &OsString, name: &str) -> Result<u64, String> {
    std::str::from_utf8(v.as_bytes())
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{name}: not a number: {}", v.to_string_lossy()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &[&str]) -> Result<Args, String> {
        parse(s.iter().map(OsString::from))
    }

    const BASE: &[&str] = &[
        "--id",
        "c1",
        "--runtime",
        "/bin/rt",
        "--runtime-root",
        "/run/r",
        "--bundle",
        "/b",
        "--dir",
        "/d",
    ];

    #[test]
    fn minimal_and_defaults() {
        let a = p(BASE).unwrap();
        assert_eq!(a.id, "c1");
        assert_eq!(a.dir, PathBuf::from("/d"));
        assert!(!a.terminal && !a.stdin);
        assert_eq!(a.log_max_size, DEFAULT_LOG_MAX);
        assert_eq!(a.sync_fd, None);
        assert_eq!(a.exit_command, None);
    }

    #[test]
    fn all_options_and_exit_command_takes_the_rest() {
        let mut v = BASE.to_vec();
        v.extend([
            "--terminal",
            "--stdin",
            "--log-max-size",
            "4096",
            "--sync-fd",
            "3",
            "--oom-file",
            "/sys/x",
            "--exit-command",
            "/bin/berth",
            "container",
            "cleanup",
            "--id",
            "c1",
        ]);
        let a = p(&v).unwrap();
        assert!(a.terminal && a.stdin);
        assert_eq!(a.log_max_size, 4096);
        assert_eq!(a.sync_fd, Some(3));
        assert_eq!(a.oom_file, Some(PathBuf::from("/sys/x")));
        let ec: Vec<String> = a
            .exit_command
            .unwrap()
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        assert_eq!(ec, ["/bin/berth", "container", "cleanup", "--id", "c1"]);
    }

    #[test]
    fn errors() {
        assert!(p(&["--id", "x"])
            .unwrap_err()
            .contains("--runtime is required"));
        assert!(p(&["--bogus"]).unwrap_err().contains("unknown argument"));
        let mut v = BASE.to_vec();
        v.extend(["--log-max-size", "ten"]);
        assert!(p(&v).unwrap_err().contains("not a number"));
        let mut v = BASE.to_vec();
        v.push("--exit-command");
        assert!(p(&v).unwrap_err().contains("needs a program"));
        let mut v = BASE.to_vec();
        v[1] = "../evil";
        assert!(p(&v).unwrap_err().contains("valid container id"));
        let mut v = BASE.to_vec();
        v[9] = "rel";
        assert!(p(&v).unwrap_err().contains("absolute"));
        assert!(p(&["--id"]).unwrap_err().contains("needs a value"));
    }
}
