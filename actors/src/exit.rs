//! The process exit codes the README documents: one enum for the `dso` binary and the actors
//! (the Supervisor stops the actor system with one of these when the agent cannot go on).

/// How the `dso` process ends. The numbers are part of the interface (README, "Exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ExitCode {
    /// Success.
    Ok = 0,
    /// A runtime failure (message on stderr).
    Failure = 1,
    /// Bad command line (clap's own code).
    Usage = 2,
    /// Docker unreachable for `agent.docker_max_reconnects` attempts.
    DockerUnreachable = 3,
    /// The configuration is invalid.
    Config = 4,
    /// The secret asked for does not exist.
    NotFound = 5,
}

impl ExitCode {
    /// The number the process exits with.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The code as `actix::System::stop_with_code` takes it.
    pub const fn as_i32(self) -> i32 {
        self as u8 as i32
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code.code())
    }
}

#[cfg(test)]
mod tests {
    use super::ExitCode;

    #[test]
    fn codes_are_the_documented_numbers() {
        let all = [
            (ExitCode::Ok, 0),
            (ExitCode::Failure, 1),
            (ExitCode::Usage, 2),
            (ExitCode::DockerUnreachable, 3),
            (ExitCode::Config, 4),
            (ExitCode::NotFound, 5),
        ];
        for (code, n) in all {
            assert_eq!(code.code(), n, "{code:?}");
        }
    }
}
