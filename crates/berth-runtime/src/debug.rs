//! `--debug`: timestamped steps on stderr, to see where a container's start spends its time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static START: OnceLock<Instant> = OnceLock::new();

pub fn enable() {
    START.get_or_init(Instant::now);
    ENABLED.store(true, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Prints `msg` with the time since `enable()`, and the pid (steps run in several processes).
pub fn step(msg: impl FnOnce() -> String) {
    if !enabled() {
        return;
    }
    let t = START.get().map(|s| s.elapsed()).unwrap_or_default();
    eprintln!(
        "berth-runtime: debug: {:>9.3} ms [{}] {}",
        t.as_secs_f64() * 1000.0,
        std::process::id(),
        msg()
    );
}
