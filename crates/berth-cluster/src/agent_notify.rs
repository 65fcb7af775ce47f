//! The engine's notifications to the agent: a unix datagram socket the agent binds (its
//! path goes into the host file, `ClusterHost::notify`), to which `berth` sends one
//! datagram when a container of the cluster network has started or has been removed.
//! A notification only says "report now": the report itself stays level-triggered (it
//! compares the engine's state with the controller's), and the periodic report remains,
//! so a lost datagram (agent restarting, full buffer) is repaired by the next period.

use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use tokio::net::UnixDatagram;

#[derive(Debug, Error)]
pub enum NotifyError {
    #[error("removing the stale notification socket {path}: {source}")]
    Stale {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("binding the notification socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why a report runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The period elapsed (or the first report): compare with a fresh listing.
    Periodic,
    /// The engine said a container started or went.
    Notified,
}

/// At most this many queued datagrams are folded into one report; more wait for the next.
const DRAIN_MAX: usize = 1024;

/// The bound socket; the file is removed when this is dropped.
pub struct Notifications {
    sock: UnixDatagram,
    path: PathBuf,
}

/// Where the agent binds its socket: next to the host file, so that whoever can read the
/// host file finds it and two agents with their own host files never share one.
pub fn socket_path(host_file: &Path) -> PathBuf {
    host_file.with_extension("sock")
}

impl Notifications {
    /// Binds `path`, replacing a socket left by an agent that died without cleaning up.
    /// Needs a tokio runtime.
    pub fn bind(path: &Path) -> Result<Notifications, NotifyError> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(NotifyError::Stale {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| NotifyError::Bind {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let sock = UnixDatagram::bind(path).map_err(|source| NotifyError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Notifications {
            sock,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for a notification, then swallows the ones already queued: one report covers
    /// them all since it looks at the whole engine state. Returns how many it took.
    pub async fn next(&self) -> usize {
        let mut buf = [0u8; 256];
        // A receive error (none expected on a bound datagram socket) counts as a
        // notification: the worst it costs is one extra report.
        let _ = self.sock.recv(&mut buf).await;
        let mut n = 1;
        while n < DRAIN_MAX && self.sock.try_recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    }
}

impl Drop for Notifications {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// When to report: at once, then every `period`, and whenever a notification arrives.
/// Notified reports don't postpone the periodic one: under constant churn the full,
/// freshly listed report still comes every period.
pub struct Schedule {
    period: Duration,
    notes: Option<Notifications>,
    /// When the next periodic report is due; None before the first report.
    due: Option<tokio::time::Instant>,
}

impl Schedule {
    pub fn new(period: Duration, notes: Option<Notifications>) -> Schedule {
        Schedule {
            period,
            notes,
            due: None,
        }
    }

    /// Waits until the next report is due and says why.
    pub async fn next(&mut self) -> Trigger {
        let Some(due) = self.due else {
            self.due = Some(tokio::time::Instant::now() + self.period);
            return Trigger::Periodic;
        };
        let trigger = match &self.notes {
            Some(n) => tokio::select! {
                _ = tokio::time::sleep_until(due) => Trigger::Periodic,
                _ = n.next() => Trigger::Notified,
            },
            None => {
                tokio::time::sleep_until(due).await;
                Trigger::Periodic
            }
        };
        if trigger == Trigger::Periodic {
            self.due = Some(tokio::time::Instant::now() + self.period);
        }
        trigger
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    /// The engine's own sender (berth_engine::network::notify_cluster_agent) wakes the
    /// loop long before its period; queued datagrams fold into one report.
    #[tokio::test]
    async fn a_notification_triggers_a_report_before_the_period() {
        let dir = tempfile::tempdir().unwrap();
        let host_file = dir.path().join("host.json");
        let notes = Notifications::bind(&socket_path(&host_file)).unwrap();
        let sock = notes.path().to_path_buf();
        std::fs::write(
            &host_file,
            serde_json::to_vec(&berth_engine::network::ClusterHost {
                name: "h".into(),
                blocks: vec!["10.244.1.0/24".parse().unwrap()],
                cidr: "10.244.0.0/16".parse().unwrap(),
                mtu: 1450,
                notify: Some(sock.clone()),
            })
            .unwrap(),
        )
        .unwrap();
        let seen: Arc<Mutex<Vec<(Trigger, Instant)>>> = Arc::default();
        let s = seen.clone();
        let task = tokio::spawn(async move {
            let mut sched = Schedule::new(Duration::from_secs(60), Some(notes));
            // Bounded: the test aborts the task long before.
            for _ in 0..100 {
                let t = sched.next().await;
                s.lock().unwrap().push((t, Instant::now()));
            }
        });
        let first = Instant::now() + Duration::from_secs(5);
        while seen.lock().unwrap().is_empty() && Instant::now() < first {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The engine finds the socket through the host file, as `berth run` does.
        let sent = Instant::now();
        let send = tokio::task::spawn_blocking(move || {
            for i in 0..3 {
                berth_engine::network::notify_cluster_agent_via(
                    &host_file,
                    berth_engine::network::ClusterEvent::Started,
                    &format!("c{i}"),
                );
            }
        });
        send.await.unwrap();
        let end = Instant::now() + Duration::from_secs(5);
        while seen.lock().unwrap().len() < 2 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        task.abort();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen[0].0, Trigger::Periodic, "{seen:?}");
        assert!(
            seen.len() >= 2 && seen[1].0 == Trigger::Notified,
            "no report after the notification: {seen:?}"
        );
        assert!(
            seen[1].1.duration_since(sent) < Duration::from_secs(2),
            "{seen:?}"
        );
        // Three datagrams sent back to back: at most three reports, usually one.
        assert!(seen.len() <= 4, "{seen:?}");
    }

    /// Notifications arriving faster than the period don't starve the periodic report.
    #[tokio::test]
    async fn the_period_holds_under_constant_notifications() {
        let dir = tempfile::tempdir().unwrap();
        let notes = Notifications::bind(&dir.path().join("n.sock")).unwrap();
        let path = notes.path().to_path_buf();
        let mut sched = Schedule::new(Duration::from_millis(200), Some(notes));
        assert_eq!(sched.next().await, Trigger::Periodic);
        let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let end = Instant::now() + Duration::from_secs(3);
        let mut periodic = 0;
        // Bounded by the 3 s deadline: a datagram every 20 ms, well inside the period.
        while Instant::now() < end && periodic < 2 {
            sender.send_to(b"started x", &path).unwrap();
            if sched.next().await == Trigger::Periodic {
                periodic += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(periodic, 2, "the periodic report never came under churn");
    }

    #[tokio::test]
    async fn the_socket_replaces_a_stale_one_and_goes_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.sock");
        let first = Notifications::bind(&p).unwrap();
        // A crashed agent leaves its file behind: simulate by forgetting the guard.
        std::mem::forget(first);
        assert!(p.exists());
        let second = Notifications::bind(&p).unwrap();
        assert!(p.exists());
        drop(second);
        assert!(!p.exists());
    }
}
