//! Proof that a pid is a container's main process, for the direct write path (SECURITY.md, "The
//! pid is the container's"): the `cgroup` file names the container *exactly*, and the process did
//! not start after the container did (a process that took over a dead container's pid started
//! later). Both texts are read by the caller through one `/proc/<pid>` directory fd.

use std::time::{Duration, SystemTime};

/// Slack between the process start time (clock ticks, 10 ms) and `State.StartedAt`, for the
/// granularity of the two clocks; runc creates the process before Docker records the start.
pub const START_SLACK: Duration = Duration::from_secs(2);

/// The cgroup paths of a container's processes, by engine and cgroup driver, for full id `id`:
/// Docker's cgroupfs driver (`/docker/<id>`, v1 and v2), its systemd driver
/// (`/system.slice/docker-<id>.scope`), the same seen from an agent container in a private cgroup
/// namespace (`/../<id>`, `/../docker-<id>.scope`), and Podman's (`libpod`).
fn container_paths(id: &str) -> [String; 8] {
    [
        format!("/docker/{id}"),
        format!("/system.slice/docker-{id}.scope"),
        format!("/../{id}"),
        format!("/../docker-{id}.scope"),
        format!("/machine.slice/libpod-{id}.scope"),
        format!("/machine.slice/libpod-{id}.scope/container"),
        format!("/libpod_parent/libpod-{id}"),
        format!("/../libpod-{id}.scope"),
    ]
}

/// True when `cgroup` (the text of `/proc/<pid>/cgroup`) puts the process in container `id` (64
/// hex digits) on every hierarchy where it is not in the root: each such line's path is exactly
/// one of the container's paths, and there is at least one. A path that merely contains the id
/// (`/user.slice/…/docker-<id>.scope`, `/x/docker/<id>`, `/docker/<id>/sub`) is not the container.
pub fn cgroup_is_container(cgroup: &str, id: &str) -> bool {
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return false;
    }
    let paths = container_paths(id);
    let mut matched = false;
    for line in cgroup.lines().filter(|l| !l.is_empty()) {
        let Some(path) = line.splitn(3, ':').nth(2) else {
            return false;
        };
        if path == "/" {
            continue;
        }
        if !paths.iter().any(|p| p == path) {
            return false;
        }
        matched = true;
    }
    matched
}

/// Field 22 of `/proc/<pid>/stat` (`starttime`: clock ticks after boot). The command name (field
/// 2) may hold spaces and parentheses: fields are counted after its last `)`.
pub fn start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Why a process is not provably the container's by its start time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// No usable `State.StartedAt`.
    #[error("the container's start time `{0}` is not a date")]
    NoStartedAt(String),
    /// `stat` has no start time.
    #[error("no start time in /proc/<pid>/stat")]
    NoStat,
    /// The process started after the container.
    #[error("the process started {0:?} after the container: the pid was reused")]
    Later(Duration),
}

/// Checks that a process that started `ticks` clock ticks after boot (at `ticks_per_sec`) did not
/// start after `started_at` (`State.StartedAt`, RFC 3339) + [`START_SLACK`]. `boot` is the wall
/// time of boot (now − `CLOCK_BOOTTIME`, the clock `starttime` counts in).
pub fn started_with_container(
    ticks: u64,
    ticks_per_sec: u64,
    boot: SystemTime,
    started_at: Option<&str>,
) -> Result<(), StartError> {
    let s = started_at.unwrap_or("");
    let container = humantime::parse_rfc3339_weak(s.trim_end_matches('Z'))
        .map_err(|_| StartError::NoStartedAt(s.chars().take(40).collect()))?;
    let per = ticks_per_sec.max(1);
    let process = boot
        + Duration::from_secs(ticks / per)
        + Duration::from_nanos((ticks % per) * 1_000_000_000 / per);
    match process.duration_since(container + START_SLACK) {
        Ok(late) if !late.is_zero() => Err(StartError::Later(late + START_SLACK)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "e1c9239d0b2c3741d43d57e01a658d46a42e55773b6ea77fe9b2e327887b0e05";

    #[test]
    fn the_real_engines_patterns_are_the_container() {
        // cgroup v1, cgroupfs driver (this machine's Docker 20.10), with a hybrid `0::` line.
        let v1 = format!(
            "9:name=systemd:/docker/{ID}\n8:pids:/docker/{ID}\n4:memory:/docker/{ID}\n0::/docker/{ID}\n"
        );
        assert!(cgroup_is_container(&v1, ID));
        // cgroup v2, systemd driver, seen from the host.
        assert!(cgroup_is_container(
            &format!("0::/system.slice/docker-{ID}.scope\n"),
            ID
        ));
        // cgroup v2 from an agent container with a private cgroup namespace.
        assert!(cgroup_is_container(
            &format!("0::/../docker-{ID}.scope\n"),
            ID
        ));
        assert!(cgroup_is_container(&format!("0::/../{ID}\n"), ID));
        // Controllers the container is not in stay at the root.
        assert!(cgroup_is_container(
            &format!("12:rdma:/\n8:pids:/docker/{ID}\n"),
            ID
        ));
        assert!(cgroup_is_container(
            &format!("0::/machine.slice/libpod-{ID}.scope/container\n"),
            ID
        ));
    }

    #[test]
    fn paths_that_merely_contain_the_id_are_not() {
        for bad in [
            format!(
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/docker-{ID}.scope\n"
            ),
            format!("0::/dso-impostor/docker-{ID}.scope\n"),
            format!("8:pids:/dso-impostor/docker/{ID}\n"),
            format!("0::/docker/{ID}/sub\n"),
            format!("0::/../../user.slice/docker-{ID}.scope\n"),
            format!("8:pids:/docker/{ID}\n4:memory:/user.slice\n"),
            "0::/\n".to_string(),
            String::new(),
            format!("garbage {ID}"),
        ] {
            assert!(!cgroup_is_container(&bad, ID), "{bad}");
        }
        assert!(!cgroup_is_container("0::/docker/abc\n", "abc"), "short ids");
    }

    #[test]
    fn start_time_is_field_22_after_the_last_parenthesis() {
        let stat = "17005 (sleep) S 16980 17005 17005 0 -1 4194560 114 0 0 0 0 0 0 0 20 0 1 0 37872 1294336 1 18446744073709551615";
        assert_eq!(start_ticks(stat), Some(37872));
        let tricky = "42 (a) b) c (d) S 1 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99 0 0";
        assert_eq!(start_ticks(tricky), Some(99));
        assert_eq!(start_ticks("42 (x"), None);
    }

    #[test]
    fn a_process_started_after_the_container_is_not_its_process() {
        let boot = humantime::parse_rfc3339("2026-11-30T16:40:22Z").unwrap();
        // Started 378.72 s after boot = 16:46:40.72; the container at 16:46:41.677.
        let at = Some("2026-11-30T16:46:41.677232978Z");
        assert_eq!(started_with_container(37872, 100, boot, at), Ok(()));
        // The same pid taken over a minute later.
        assert!(matches!(
            started_with_container(37872 + 6000, 100, boot, at),
            Err(StartError::Later(_))
        ));
        // Within the slack.
        assert_eq!(started_with_container(37872 + 250, 100, boot, at), Ok(()));
        assert!(matches!(
            started_with_container(1, 100, boot, None),
            Err(StartError::NoStartedAt(_))
        ));
    }
}
