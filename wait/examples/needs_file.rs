//! Test fixture (`tests/compose.rs`): an application like the official images' entrypoints, for an
//! image without a shell. `needs_file VAR`: exits 3 when the file named by `$VAR` is missing or
//! empty; else prints `started-with-file pid=<pid>` and sleeps until SIGTERM/SIGINT (exit 0).
//! Built static like `dso-wait`; standard library only.

use std::process::ExitCode;
use std::time::Duration;

extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    fn _exit(status: i32) -> !;
}

extern "C" fn on_stop(_: i32) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { _exit(0) }
}

fn main() -> ExitCode {
    let var = std::env::args().nth(1).unwrap_or_default();
    let path = std::env::var(&var).unwrap_or_default();
    match std::fs::metadata(&path) {
        Ok(m) if m.len() > 0 => {}
        _ => {
            eprintln!("NOFILE: ${var} = {path:?} is missing or empty");
            return ExitCode::from(3);
        }
    }
    for sig in [2, 15] {
        // SAFETY: installs a handler that only calls _exit.
        unsafe {
            signal(sig, on_stop);
        }
    }
    println!("started-with-file pid={}", std::process::id());
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
