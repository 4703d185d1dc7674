//! `--drive-options`: `-drive` keys given to every engine's device, so that each option
//! (throttling, discard, detect-zeroes, direct, ...) can be measured at device level.

use std::path::Path;

use anyhow::{bail, Result};
use device_model::virtio::BlockBackendConfig;
use machine_manager::config::DriveConfig;
use util::aio::{AioEngine, ErrorAction, WorkerSetup};

use crate::backing::Backing;

/// Keys the benchmark sets itself.
const OWN_KEYS: [(&str, &str); 3] = [
    ("id", "the benchmark names its drive"),
    ("file", "--backings chooses the files"),
    ("aio", "--engines chooses the engines"),
];

/// The parsed `--drive-options`.
#[derive(Debug, Clone, Default)]
pub struct DriveOptions {
    /// The text as given (stored with the results).
    pub text: String,
    /// The keys as `-drive` parses them, on a stand-in file.
    config: Option<DriveConfig>,
    /// `direct=`, when given: it wins over the backing's.
    direct: Option<bool>,
    /// `werror=` or `rerror=` was given; otherwise every error is reported and counted.
    error_policy: bool,
}

impl DriveOptions {
    /// Parses `KEY=VALUE,...` with the VMM's own `-drive` parser.
    pub fn parse(text: &str) -> Result<DriveOptions> {
        let keys: Vec<&str> = text
            .split(',')
            .map(|item| item.split('=').next().unwrap_or("").trim())
            .collect();
        for (key, why) in OWN_KEYS {
            if keys.contains(&key) {
                bail!("--drive-options cannot set {key}: {why}");
            }
        }
        let config = DriveConfig::parse(&format!("file=bench.img,{text}"))?;
        Ok(DriveOptions {
            text: text.to_string(),
            direct: keys.contains(&"direct").then_some(config.direct),
            error_policy: keys.iter().any(|k| matches!(*k, "werror" | "rerror")),
            config: Some(config),
        })
    }

    /// Whether the files of `backing` are opened with O_DIRECT.
    pub fn direct(&self, backing: Backing) -> bool {
        self.direct.unwrap_or(backing.direct())
    }

    /// The drive of one cell: `path` with `aio` and these options.
    pub fn backend(&self, path: &Path, aio: AioEngine, backing: Backing) -> BlockBackendConfig {
        let mut drive = self
            .config
            .clone()
            .unwrap_or_else(|| DriveConfig::new("bench0", path.to_path_buf()));
        drive.path = path.to_path_buf();
        drive.aio = aio;
        drive.direct = self.direct(backing);
        if !self.error_policy {
            drive.werror = ErrorAction::Report;
            drive.rerror = ErrorAction::Report;
        }
        // The rig gives the workers of aio=threads their seccomp filter (`Rig::new`).
        micro_vm::block_devices::backend_config(&drive, &WorkerSetup::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_reach_the_drive() {
        let o = DriveOptions::parse("throttling.iops-total=5000,discard=unmap,direct=off").unwrap();
        let b = o.backend(Path::new("/f"), AioEngine::IoUring, Backing::Shm);
        assert_eq!(b.throttle.iops_total.avg, 5000);
        assert!(!b.direct, "direct= wins over the backing");
        assert_eq!(b.aio, AioEngine::IoUring);
        assert_eq!(b.path, Path::new("/f"));
        assert_eq!(b.werror, ErrorAction::Report);
    }

    #[test]
    fn without_options_the_backing_decides() {
        let o = DriveOptions::default();
        assert!(o.direct(Backing::Shm));
        assert!(!o.direct(Backing::Buffered));
        let b = o.backend(Path::new("/f"), AioEngine::Native, Backing::Disk);
        assert!(b.direct);
        assert!(!b.throttle.is_set());
    }

    #[test]
    fn bad_or_reserved_keys_are_errors() {
        for bad in [
            "aio=native",
            "file=/x",
            "id=d",
            "throttling.iops-total=x",
            "discard=maybe",
            "bogus=1",
        ] {
            assert!(DriveOptions::parse(bad).is_err(), "{bad}");
        }
        let policy = DriveOptions::parse("werror=stop").unwrap();
        let b = policy.backend(Path::new("/f"), AioEngine::Off, Backing::Disk);
        assert_eq!(b.werror, ErrorAction::Stop);
    }
}
