//! The agent's process hardening: no core dumps, memory locked where the OS allows it (secret
//! values never swapped out). `dso doctor` reports whether the lock is possible.

/// Marks the process not dumpable: no core dump (and no ptrace by non-root) can expose a secret.
pub fn disable_core_dumps() {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) only changes this process's dumpable flag.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
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
            // SAFETY: mlockall only changes this process's paging; MCL_ONFAULT locks pages as
            // they are touched, so reserved-but-unused memory (thread stacks) costs nothing.
            let rc = unsafe {
                libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT)
            };
            if rc == 0 {
                tracing::info!("memory locked (mlockall): secret values are never swapped out");
            } else {
                tracing::warn!(
                    error = %std::io::Error::last_os_error(),
                    "could not lock memory (mlockall); secret values could be swapped out"
                );
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
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    if rc == 0 && lim.rlim_cur == libc::RLIM_INFINITY {
        return Ok(());
    }
    Err(format!(
        "no CAP_IPC_LOCK and the memlock ulimit is {} KiB",
        lim.rlim_cur / 1024
    ))
}
