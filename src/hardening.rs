//! The agent's process hardening: no core dumps, memory locked where the OS allows it (secret
//! values never swapped out). `dso doctor` reports whether the lock is possible.

/// Marks the process not dumpable: no core dump (and no ptrace by non-root) can expose a secret.
pub fn disable_core_dumps() {
    use rustix::process::{set_dumpable_behavior, DumpableBehavior};
    if set_dumpable_behavior(DumpableBehavior::NotDumpable).is_err() {
        tracing::warn!("could not disable core dumps (prctl PR_SET_DUMPABLE)");
    }
}

/// Locks the agent's memory so secret values are never swapped out, where the OS allows it: with
/// CAP_IPC_LOCK or an unlimited `memlock` ulimit, `mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`.
/// Without either, locking everything would make allocations fail once the (small) limit is
/// reached, so the agent warns instead and runs unlocked.
pub fn lock_memory() {
    match memory_lock_possible() {
        Ok(()) => {
            use rustix::mm::{mlockall, MlockAllFlags};
            // ONFAULT locks pages as they are touched, so reserved-but-unused memory (thread
            // stacks) costs nothing.
            let flags = MlockAllFlags::CURRENT | MlockAllFlags::FUTURE | MlockAllFlags::ONFAULT;
            match mlockall(flags) {
                Ok(()) => tracing::info!(
                    "memory locked (mlockall): secret values are never swapped out"
                ),
                Err(e) => tracing::warn!(
                    error = %std::io::Error::from(e),
                    "could not lock memory (mlockall); secret values could be swapped out"
                ),
            }
        }
        Err(why) => tracing::warn!(
            "memory not locked ({why}): secret values could be swapped out; grant CAP_IPC_LOCK              (compose: cap_add: [IPC_LOCK]) or an unlimited memlock ulimit, or disable swap"
        ),
    }
}

/// Ok when `mlockall(MCL_FUTURE)` cannot starve the allocator; else why not.
pub fn memory_lock_possible() -> Result<(), String> {
    const CAP_IPC_LOCK: u32 = 14;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    if cap_eff & (1 << CAP_IPC_LOCK) != 0 {
        return Ok(());
    }
    use rustix::process::{getrlimit, Resource};
    // `None` is RLIM_INFINITY.
    match getrlimit(Resource::Memlock).current {
        None => Ok(()),
        Some(bytes) => Err(format!(
            "no CAP_IPC_LOCK and the memlock ulimit is {} KiB",
            bytes / 1024
        )),
    }
}
