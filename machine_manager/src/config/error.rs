//! Errors of the command line: one variant per rule, each displayed on one line (user text
//! is quoted with `{:?}`, so a newline in an argument cannot break the line).

/// Why the command line was not accepted (or, for [`ConfigError::Help`] and
/// [`ConfigError::Version`], what the user asked for instead of a VM).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `-h`, `-help` or `--help`: print [`super::usage`] and exit 0.
    #[error("help requested")]
    Help,
    /// `-version` or `--version`: print [`super::version`] and exit 0.
    #[error("version requested")]
    Version,
    /// An option nobody knows.
    #[error("unknown option {0:?} (see -help)")]
    UnknownOption(String),
    /// An argument that is not an option.
    #[error("unexpected argument {0:?}: options start with '-'")]
    UnexpectedArgument(String),
    /// An option that needs a value came last.
    #[error("option {0} needs a value")]
    MissingValue(String),
    /// An option that may appear once appeared again.
    #[error("option {0} given more than once")]
    DuplicateOption(String),
    /// A `key=value` list has an empty item (`a=1,,` or a trailing comma).
    #[error("{option}: empty item in {text:?}")]
    EmptyItem {
        /// The option.
        option: String,
        /// The whole value.
        text: String,
    },
    /// A key the option does not have.
    #[error("{option}: unknown key {key:?}")]
    UnknownKey {
        /// The option.
        option: String,
        /// The key.
        key: String,
    },
    /// A key given twice in one option.
    #[error("{option}: key {key:?} given more than once")]
    DuplicateKey {
        /// The option.
        option: String,
        /// The key.
        key: String,
    },
    /// A required key is missing.
    #[error("{option}: missing {key}")]
    MissingKey {
        /// The option.
        option: String,
        /// The key (or what is missing).
        key: String,
    },
    /// A value that is malformed or out of range.
    #[error("{option}: invalid {key} {value:?}: expected {expected}")]
    InvalidValue {
        /// The option.
        option: String,
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// What would have been accepted.
        expected: String,
    },
    /// `aio=native` on a drive opened without O_DIRECT.
    #[error("drive {0:?}: aio=native needs direct=on: Linux native AIO runs synchronously on buffered (non-O_DIRECT) files, use aio=io_uring or aio=off")]
    AioNativeNeedsDirect(String),
    /// Two keys that exclude each other were both given.
    #[error("{option}: {first} and {second} cannot be given together: {why}")]
    ConflictingKeys {
        /// The option (`-device`).
        option: String,
        /// One key.
        first: String,
        /// The other.
        second: String,
        /// Why.
        why: &'static str,
    },
    /// Two drives with the same id.
    #[error("drive id {0:?} is used more than once")]
    DuplicateDriveId(String),
    /// Two devices with the same id.
    #[error("device id {0:?} is used more than once")]
    DuplicateDeviceId(String),
    /// Two iothreads with the same id.
    #[error("iothread id {0:?} is used more than once")]
    DuplicateIothread(String),
    /// A `-device` names a drive that no `-drive` defines.
    #[error("device {device:?}: no drive with id {drive:?}")]
    UnknownDrive {
        /// The device id.
        device: String,
        /// The drive id it names.
        drive: String,
    },
    /// Two devices use the same drive.
    #[error("drive {0:?} is used by more than one device")]
    DriveUsedTwice(String),
    /// A `-device` names an iothread that no `-object iothread` defines.
    #[error("device {device:?}: no iothread with id {iothread:?}")]
    UnknownIothread {
        /// The device id.
        device: String,
        /// The iothread id it names.
        iothread: String,
    },
    /// A drive's I/O limits break one of QEMU's rules.
    #[error("drive {drive:?}: throttling: {reason}")]
    Throttling {
        /// The drive id.
        drive: String,
        /// Which rule the limits break.
        reason: String,
    },
    /// A CPU feature is both enabled and disabled on `-cpu`.
    #[error("-cpu: feature {0:?} is both enabled and disabled")]
    ConflictingCpuFeature(String),
    /// A device, backend or option StratoVirt has that this VMM has not built yet.
    #[error("{option} {what} is not supported yet")]
    NotSupportedYet {
        /// The option (`-device`, `-netdev`, `-chardev`, `-object`).
        option: String,
        /// The device or backend named.
        what: String,
    },
    /// An `-smp` topology that does not add up, or that the micro VM cannot present.
    #[error("-smp: {0}")]
    BadTopology(String),
    /// `-daemonize` with a device on stdio (the daemon's stdio is /dev/null).
    #[error("-daemonize cannot be used with -serial stdio: a daemon has no terminal (its stdio is /dev/null)")]
    DaemonizeWithStdio,
    /// Two `-object`s with the same id.
    #[error("object id {0:?} is used more than once")]
    DuplicateObjectId(String),
    /// A `-device virtio-rng-device` names an rng object that no `-object rng-random` defines.
    #[error("device {device:?}: no rng-random object with id {rng:?}")]
    UnknownRngObject {
        /// The device id.
        device: String,
        /// The object id it names.
        rng: String,
    },
    /// Two devices use the same rng object.
    #[error("rng object {0:?} is used by more than one device")]
    RngUsedTwice(String),
}

/// Result of the command line parser.
pub type Result<T> = std::result::Result<T, ConfigError>;
