//! The append-only audit log: one JSON line per delivery, rotation, refusal and reload. Records
//! carry names, sources, digests and results — never a value (the record type has no field that
//! could hold one).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use actix::prelude::*;
use dso_actors::messages::AuditRecord;

/// The audit actor's mailbox: records waiting to be appended. The Injectors `try_send` one record
/// per delivery, rotation, refusal and reload and count a record that finds the mailbox full in
/// `dso_events_dropped_total{reason="audit_full"}` rather than wait: a slow disk never blocks an
/// injection. An append is one small write, so the mailbox only fills while the disk stalls;
/// 10,000 records (a few MB at most) absorb a mass start or rotation of thousands of containers.
/// Deliberately not an operator setting: a larger mailbox only delays the drops when the disk is
/// stuck, and the counter shows them.
pub const QUEUE_CAPACITY: usize = 10_000;

/// Why the audit log could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("agent.audit_log {path}: {reason}")]
pub struct AuditOpenError {
    /// The file.
    pub path: String,
    /// The OS error.
    pub reason: String,
}

/// The actor owning the audit file.
pub struct AuditLog {
    file: File,
    path: String,
}

impl AuditLog {
    /// Opens (creates 0600) the file for appending.
    pub fn open(path: &Path) -> Result<Self, AuditOpenError> {
        let err = |e: std::io::Error| AuditOpenError {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        Ok(Self {
            file,
            path: path.display().to_string(),
        })
    }
}

impl Actor for AuditLog {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(QUEUE_CAPACITY);
    }
}

impl Handler<AuditRecord> for AuditLog {
    type Result = ();

    fn handle(&mut self, msg: AuditRecord, _ctx: &mut Self::Context) {
        let mut line = match serde_json::to_vec(&msg) {
            Ok(l) => l,
            Err(_) => return,
        };
        line.push(b'\n');
        if let Err(e) = self.file.write_all(&line) {
            tracing::warn!(path = %self.path, error = %e, "cannot append to the audit log");
        }
    }
}
