//! Running OCI hooks: each gets the container state JSON on stdin, its own args and env,
//! and is killed when its timeout passes.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum HookError {
    #[error("running {phase} hook {path}: {source}")]
    Spawn {
        phase: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{phase} hook {path} failed: {status}{stderr}")]
    Failed {
        phase: &'static str,
        path: String,
        status: String,
        stderr: String,
    },
    #[error("{phase} hook {path} timed out after {secs}s")]
    Timeout {
        phase: &'static str,
        path: String,
        secs: i64,
    },
}

/// Runs `hooks` in order; the first failure stops the sequence.
pub fn run(phase: &'static str, hooks: &[Hook], state_json: &str) -> Result<(), HookError> {
    for h in hooks {
        run_one(phase, h, state_json)?;
    }
    Ok(())
}

fn run_one(phase: &'static str, h: &Hook, state_json: &str) -> Result<(), HookError> {
    let path = h.path().display().to_string();
    let mut cmd = Command::new(h.path());
    if let Some(args) = h.args() {
        if let Some((argv0, rest)) = args.split_first() {
            cmd.arg0(argv0).args(rest);
        }
    }
    cmd.env_clear();
    for kv in h.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let spawn_err = |source| HookError::Spawn {
        phase,
        path: path.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that doesn't read its stdin closes the pipe: not an error.
        let _ = stdin.write_all(state_json.as_bytes());
    }
    let status = match h.timeout() {
        Some(secs) if secs > 0 => {
            let deadline = Instant::now() + Duration::from_secs(secs as u64);
            loop {
                if let Some(st) = child.try_wait().map_err(spawn_err)? {
                    break st;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(HookError::Timeout { phase, path, secs });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        _ => child.wait().map_err(spawn_err)?,
    };
    if status.success() {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    let stderr = stderr.trim();
    Err(HookError::Failed {
        phase,
        path,
        status: status.to_string(),
        stderr: if stderr.is_empty() {
            String::new()
        } else {
            format!(": {stderr}")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(json: &str) -> Hook {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn hook_gets_state_on_stdin_and_failure_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let h = hook(&format!(
            r#"{{"path":"/bin/sh","args":["sh","-c","cat > {}"]}}"#,
            out.display()
        ));
        run("prestart", &[h], r#"{"id":"x"}"#).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), r#"{"id":"x"}"#);

        let bad = hook(r#"{"path":"/bin/sh","args":["sh","-c","echo boom >&2; exit 3"]}"#);
        let err = run("poststart", &[bad], "{}").unwrap_err().to_string();
        assert!(err.contains("poststart hook /bin/sh failed"), "{err}");
        assert!(err.contains("boom"), "{err}");
    }

    #[test]
    fn hook_timeout_kills_it() {
        let h = hook(r#"{"path":"/bin/sleep","args":["sleep","10"],"timeout":1}"#);
        let t = Instant::now();
        let err = run("createRuntime", &[h], "{}").unwrap_err();
        assert!(matches!(err, HookError::Timeout { .. }), "{err}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn env_is_only_the_hooks_own() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let h = hook(&format!(
            r#"{{"path":"/bin/sh","args":["sh","-c","env > {}"],"env":["FOO=bar"]}}"#,
            out.display()
        ));
        run("poststop", &[h], "{}").unwrap();
        let env = std::fs::read_to_string(&out).unwrap();
        assert!(env.contains("FOO=bar"));
        assert!(!env.contains("HOME="), "{env}");
    }
}
