//! `-object rng-random` (an entropy source: a host file) and `-device virtio-rng-device` (the
//! guest's virtio entropy device reading it), as StratoVirt spells them:
//!
//! ```text
//! -object rng-random,id=objrng0,filename=/dev/urandom
//! -device virtio-rng-device,rng=objrng0,id=virtio-rng0[,max-bytes=N,period=MS]
//! ```
//!
//! - `max-bytes` and `period` come together (StratoVirt's rule) and give at most `max-bytes`
//!   bytes per `period` milliseconds, 64 bytes/s to 10^9 bytes/s.
//! - Each device names an object that exists, and no object serves two devices.
//! - `id` may be omitted: the device then takes its object's id.

use std::path::PathBuf;

use super::error::{ConfigError, Result};
use super::kv::{parse_u64, KvList};

/// Driver name of the entropy device on `-device`.
pub const RNG_DRIVER: &str = "virtio-rng-device";
/// Type of the entropy source on `-object`.
pub const RNG_OBJECT: &str = "rng-random";
/// Slowest rate `max-bytes`/`period` may set, in bytes per second (StratoVirt's bound).
pub const MIN_RNG_BYTES_PER_SEC: u64 = 64;
/// Fastest rate `max-bytes`/`period` may set, in bytes per second (StratoVirt's bound).
pub const MAX_RNG_BYTES_PER_SEC: u64 = 1_000_000_000;

/// A virtio-rng device and the host file it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RngConfig {
    /// The device id (`id=`, or the object's id).
    pub id: String,
    /// The `-object rng-random` it uses (`rng=`).
    pub object: String,
    /// The entropy file the object names (`filename=`).
    pub filename: PathBuf,
    /// At most this many bytes per second (`max-bytes` * 1000 / `period`), if limited.
    pub bytes_per_sec: Option<u64>,
}

/// `-object rng-random,id=R,filename=F`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RngObject {
    pub id: String,
    pub filename: PathBuf,
}

/// `-device virtio-rng-device,...` before its object is looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RngDeviceArg {
    pub id: Option<String>,
    pub rng: String,
    pub bytes_per_sec: Option<u64>,
}

/// Parses the value of `-object rng-random,...` (the caller checked the type).
pub(crate) fn parse_object(text: &str) -> Result<RngObject> {
    let mut kv = KvList::parse("-object", text)?;
    kv.take_implied("qom-type")?;
    let id = kv.require("id")?;
    super::drive::check_id("-object", "id", &id)?;
    let filename = kv.require("filename")?;
    if filename.is_empty() {
        return Err(kv.invalid("filename", "", "a path"));
    }
    kv.finish()?;
    Ok(RngObject {
        id,
        filename: PathBuf::from(filename),
    })
}

/// Parses the value of `-device virtio-rng-device,...` (the caller checked the driver).
pub(crate) fn parse_device(text: &str) -> Result<RngDeviceArg> {
    let mut kv = KvList::parse("-device", text)?;
    kv.take_implied("driver")?;
    let id = kv.take("id");
    if let Some(id) = &id {
        super::drive::check_id("-device", "id", id)?;
    }
    let rng = kv.require("rng")?;
    let mut number = |key: &str| -> Result<Option<u64>> {
        kv.take(key)
            .map(|value| parse_u64(&value).ok_or_else(|| invalid(key, &value, "a number")))
            .transpose()
    };
    let max_bytes = number("max-bytes")?;
    let period = number("period")?;
    kv.finish()?;
    let bytes_per_sec = match (max_bytes, period) {
        (None, None) => None,
        (Some(max_bytes), Some(period)) => Some(rate(max_bytes, period)?),
        _ => {
            return Err(ConfigError::MissingKey {
                option: "-device".into(),
                key: "max-bytes and period (give both or neither)".into(),
            })
        }
    };
    Ok(RngDeviceArg {
        id,
        rng,
        bytes_per_sec,
    })
}

/// `max_bytes` per `period_ms`, in bytes per second, within StratoVirt's bounds.
fn rate(max_bytes: u64, period_ms: u64) -> Result<u64> {
    let expected = "a rate (max-bytes * 1000 / period) from 64 to 1000000000 bytes per second";
    if period_ms == 0 {
        return Err(invalid("period", "0", "at least 1 (milliseconds)"));
    }
    max_bytes
        .checked_mul(1000)
        .map(|n| n / period_ms)
        .filter(|r| (MIN_RNG_BYTES_PER_SEC..=MAX_RNG_BYTES_PER_SEC).contains(r))
        .ok_or_else(|| invalid("max-bytes", &max_bytes.to_string(), expected))
}

fn invalid(key: &str, value: &str, expected: &str) -> ConfigError {
    ConfigError::InvalidValue {
        option: "-device".into(),
        key: key.into(),
        value: value.into(),
        expected: expected.into(),
    }
}

/// Ties each device to its object: objects exist and serve one device each; ids default to
/// the object's.
pub(crate) fn resolve(objects: &[RngObject], devices: Vec<RngDeviceArg>) -> Result<Vec<RngConfig>> {
    let mut used: Vec<&str> = Vec::new();
    let mut resolved = Vec::with_capacity(devices.len());
    for device in devices {
        let id = device.id.unwrap_or_else(|| device.rng.clone());
        let object = objects.iter().find(|o| o.id == device.rng).ok_or_else(|| {
            ConfigError::UnknownRngObject {
                device: id.clone(),
                rng: device.rng.clone(),
            }
        })?;
        if used.contains(&object.id.as_str()) {
            return Err(ConfigError::RngUsedTwice(object.id.clone()));
        }
        used.push(&object.id);
        resolved.push(RngConfig {
            id,
            object: object.id.clone(),
            filename: object.filename.clone(),
            bytes_per_sec: device.bytes_per_sec,
        });
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_and_devices_parse_as_kata_writes_them() {
        assert_eq!(
            parse_object("rng-random,id=objrng0,filename=/dev/urandom").unwrap(),
            RngObject {
                id: "objrng0".into(),
                filename: "/dev/urandom".into()
            }
        );
        assert_eq!(
            parse_device("virtio-rng-device,rng=objrng0,id=virtio-rng0").unwrap(),
            RngDeviceArg {
                id: Some("virtio-rng0".into()),
                rng: "objrng0".into(),
                bytes_per_sec: None
            }
        );
        assert_eq!(
            parse_device("virtio-rng-device,rng=r,max-bytes=1234,period=1000")
                .unwrap()
                .bytes_per_sec,
            Some(1234)
        );
        assert_eq!(
            parse_device("virtio-rng-device,rng=r,max-bytes=64,period=500")
                .unwrap()
                .bytes_per_sec,
            Some(128)
        );
        for bad in [
            "virtio-rng-device",
            "virtio-rng-device,rng=r,max-bytes=1234",
            "virtio-rng-device,rng=r,period=1000",
            "virtio-rng-device,rng=r,max-bytes=63,period=1000",
            "virtio-rng-device,rng=r,max-bytes=1000000001,period=1000",
            "virtio-rng-device,rng=r,max-bytes=18446744073709551615,period=1",
            "virtio-rng-device,rng=r,max-bytes=100,period=0",
            "virtio-rng-device,rng=r,id=9x",
            "virtio-rng-device,rng=r,bus=pcie.0",
        ] {
            assert!(parse_device(bad).is_err(), "{bad}");
        }
        for bad in [
            "rng-random,id=r",
            "rng-random,filename=/dev/urandom",
            "rng-random,id=r,filename=",
            "rng-random,id=r,filename=/f,extra=1",
        ] {
            assert!(parse_object(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn devices_need_their_own_object() {
        let objects = [
            parse_object("rng-random,id=a,filename=/dev/urandom").unwrap(),
            parse_object("rng-random,id=b,filename=/dev/random").unwrap(),
        ];
        let resolved = resolve(
            &objects,
            vec![
                parse_device("virtio-rng-device,rng=b").unwrap(),
                parse_device("virtio-rng-device,rng=a,id=dev").unwrap(),
            ],
        )
        .unwrap();
        assert_eq!(
            resolved
                .iter()
                .map(|r| (r.id.as_str(), r.filename.to_str().unwrap()))
                .collect::<Vec<_>>(),
            [("b", "/dev/random"), ("dev", "/dev/urandom")]
        );
        assert_eq!(
            resolve(
                &objects,
                vec![parse_device("virtio-rng-device,rng=c,id=x").unwrap()]
            ),
            Err(ConfigError::UnknownRngObject {
                device: "x".into(),
                rng: "c".into()
            })
        );
        assert_eq!(
            resolve(
                &objects,
                vec![
                    parse_device("virtio-rng-device,rng=a,id=x").unwrap(),
                    parse_device("virtio-rng-device,rng=a,id=y").unwrap()
                ]
            ),
            Err(ConfigError::RngUsedTwice("a".into()))
        );
    }
}
