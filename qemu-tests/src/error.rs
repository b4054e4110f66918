//! The harness's error type: every failure names what was being done and on what.
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Errors of building the test OS and running machines.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory operation failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done, as a gerund (`reading`, `creating`).
        action: String,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An external program could not be started or failed.
    #[error("running {command}: {detail}")]
    Command {
        /// The command line, shortened to the program and its first arguments.
        command: String,
        /// Exit status and the last line of output, or why it could not start.
        detail: String,
    },
    /// The guest did not print what was awaited in time.
    #[error("waiting {timeout:?} for {what} on the serial console of {machine} (log {}); last lines:\n{tail}", log.display())]
    Timeout {
        /// What was awaited (the pattern).
        what: String,
        /// How long.
        timeout: Duration,
        /// The machine's name.
        machine: String,
        /// The serial console log.
        log: PathBuf,
        /// The last lines of the console.
        tail: String,
    },
    /// QEMU exited while something else was awaited, or exited unsuccessfully.
    #[error("{machine} exited ({status}) while waiting for {what} (log {}); last lines:\n{tail}", log.display())]
    Exited {
        /// What was awaited.
        what: String,
        /// QEMU's exit status.
        status: String,
        /// The machine's name.
        machine: String,
        /// The serial console log.
        log: PathBuf,
        /// The last lines of the console.
        tail: String,
    },
    /// A command run in the guest exited non-zero.
    #[error("guest command {command:?} on {machine} exited {rc}; output:\n{output}")]
    GuestCommand {
        /// The command.
        command: String,
        /// The machine's name.
        machine: String,
        /// Its exit status.
        rc: i32,
        /// What it printed.
        output: String,
    },
    /// An input the harness needs is missing or malformed.
    #[error("{0}")]
    Invalid(String),
    /// A bootctl operation on a disk image failed.
    #[error("{action} {}", path.display())]
    Bootctl {
        /// What was being done.
        action: String,
        /// The disk image.
        path: PathBuf,
        /// The bootctl error.
        #[source]
        source: bootctl::Error,
    },
}

/// The harness's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Io`] for `action` on `path`.
    pub fn io(action: impl Into<String>, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            action: action.into(),
            path: path.into(),
            source,
        }
    }
}

/// Adds the action and path to an `io::Result`.
pub(crate) trait IoContext<T> {
    /// Wraps the error as [`Error::Io`].
    fn ctx(self, action: &str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, action: &str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(action, path, e))
    }
}
