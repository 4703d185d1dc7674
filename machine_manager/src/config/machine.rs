//! Values of the machine-wide options: `-machine`, `-m`, `-smp`, `-cpu`, `-serial`, `-qmp`.

use std::path::PathBuf;

use super::error::{ConfigError, Result};
use super::kv::{parse_u64, KvList};

/// The only machine type.
pub const MACHINE_TYPE: &str = "microvm";
/// Default guest RAM: 256 MiB.
pub const DEFAULT_MEM_SIZE: u64 = 256 << 20;
/// Smallest guest RAM: 128 MiB.
pub const MIN_MEM_SIZE: u64 = 128 << 20;
/// Largest guest RAM: 512 GiB.
pub const MAX_MEM_SIZE: u64 = 512 << 30;
/// Most vCPUs (APIC ids 0..=253 on an MP table).
pub const MAX_CPUS: u8 = 254;
/// The only CPU model.
pub const CPU_MODEL: &str = "host";

/// The vCPU model and the CPUID features to change on it (`-cpu host,-feat,+feat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuConfig {
    /// The model: `host`.
    pub model: String,
    /// Features to hide (`-feat` or `feat=off`), in command-line order.
    pub disabled: Vec<String>,
    /// Features to show (`+feat` or `feat=on`), in command-line order.
    pub enabled: Vec<String>,
}

impl Default for CpuConfig {
    fn default() -> Self {
        CpuConfig {
            model: CPU_MODEL.to_string(),
            disabled: Vec::new(),
            enabled: Vec::new(),
        }
    }
}

/// `-machine [type=]microvm`.
pub(crate) fn parse_machine(text: &str) -> Result<String> {
    let mut kv = KvList::parse("-machine", text)?;
    let machine = kv.take_implied("type")?.ok_or_else(|| kv.missing("type"))?;
    if machine != MACHINE_TYPE {
        return Err(kv.invalid("type", &machine, MACHINE_TYPE));
    }
    kv.finish()?;
    Ok(machine)
}

/// `-m [size=]N[M|G]`: bytes, in 128 MiB..=512 GiB. A bare number is MiB.
pub(crate) fn parse_memory(text: &str) -> Result<u64> {
    let mut kv = KvList::parse("-m", text)?;
    let value = kv.take_implied("size")?.ok_or_else(|| kv.missing("size"))?;
    kv.finish()?;
    let expected = "a size from 128M to 512G (suffix M or G, default M)";
    let (digits, shift) = match value.as_bytes().last() {
        Some(b'M' | b'm') => (&value[..value.len() - 1], 20),
        Some(b'G' | b'g') => (&value[..value.len() - 1], 30),
        _ => (value.as_str(), 20),
    };
    parse_u64(digits)
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|bytes| (MIN_MEM_SIZE..=MAX_MEM_SIZE).contains(bytes))
        .ok_or_else(|| kv_invalid("-m", "size", &value, expected))
}

/// `-smp [cpus=]N`, 1..=254.
pub(crate) fn parse_smp(text: &str) -> Result<u8> {
    let mut kv = KvList::parse("-smp", text)?;
    let value = kv.take_implied("cpus")?.ok_or_else(|| kv.missing("cpus"))?;
    kv.finish()?;
    parse_u64(&value)
        .filter(|n| (1..=u64::from(MAX_CPUS)).contains(n))
        .map(|n| n as u8)
        .ok_or_else(|| kv_invalid("-smp", "cpus", &value, "a number from 1 to 254"))
}

/// `-cpu host[,-feat][,+feat][,feat=on|off]`.
pub(crate) fn parse_cpu(text: &str) -> Result<CpuConfig> {
    let mut kv = KvList::parse("-cpu", text)?;
    let model = kv
        .take_implied("model")?
        .ok_or_else(|| kv.missing("model"))?;
    if model != CPU_MODEL {
        return Err(kv.invalid("model", &model, CPU_MODEL));
    }
    let mut cpu = CpuConfig::default();
    for word in kv.take_bare_words() {
        let (enable, name) = match word.split_at_checked(1) {
            Some(("+", name)) => (true, name),
            Some(("-", name)) => (false, name),
            _ => return Err(kv.invalid("feature", &word, "+FEATURE or -FEATURE")),
        };
        add_feature(&mut cpu, enable, name, &word)?;
    }
    for (name, value) in kv.take_pairs() {
        let enable = match value.as_str() {
            "on" | "true" => true,
            "off" | "false" => false,
            // The name is the user's text: it goes in the quoted value, never unquoted.
            _ => {
                return Err(kv.invalid(
                    "feature",
                    &format!("{name}={value}"),
                    "FEATURE=on or FEATURE=off",
                ))
            }
        };
        add_feature(&mut cpu, enable, &name, &name)?;
    }
    kv.finish()?;
    Ok(cpu)
}

fn add_feature(cpu: &mut CpuConfig, enable: bool, name: &str, as_written: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if !valid {
        return Err(kv_invalid(
            "-cpu",
            "feature",
            as_written,
            "a CPUID feature name such as x2apic or pdpe1gb",
        ));
    }
    let (add_to, other) = if enable {
        (&mut cpu.enabled, &cpu.disabled)
    } else {
        (&mut cpu.disabled, &cpu.enabled)
    };
    if other.iter().any(|f| f == name) {
        return Err(ConfigError::ConflictingCpuFeature(name.to_string()));
    }
    if !add_to.iter().any(|f| f == name) {
        add_to.push(name.to_string());
    }
    Ok(())
}

/// `-serial stdio`.
pub(crate) fn parse_serial(text: &str) -> Result<bool> {
    if text == "stdio" {
        Ok(true)
    } else {
        Err(kv_invalid("-serial", "backend", text, "stdio"))
    }
}

/// `-qmp unix:PATH,server,nowait`: the socket path.
pub(crate) fn parse_qmp(text: &str) -> Result<PathBuf> {
    let mut kv = KvList::parse("-qmp", text)?;
    let address = kv
        .take_implied("path")?
        .ok_or_else(|| kv.missing("unix:PATH"))?;
    let path = address
        .strip_prefix("unix:")
        .filter(|path| !path.is_empty())
        .ok_or_else(|| kv.invalid("address", &address, "unix:PATH"))?;
    for flag in ["server", "nowait"] {
        if !kv.take_flag(flag) {
            return Err(kv.missing(&format!("{flag} (both server and nowait are required)")));
        }
    }
    kv.finish()?;
    Ok(PathBuf::from(path))
}

fn kv_invalid(option: &str, key: &str, value: &str, expected: &str) -> ConfigError {
    ConfigError::InvalidValue {
        option: option.to_string(),
        key: key.to_string(),
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_and_units() {
        assert_eq!(parse_memory("256").unwrap(), 256 << 20);
        assert_eq!(parse_memory("512M").unwrap(), 512 << 20);
        assert_eq!(parse_memory("1024m").unwrap(), 1 << 30);
        assert_eq!(parse_memory("2G").unwrap(), 2 << 30);
        assert_eq!(parse_memory("size=4g").unwrap(), 4 << 30);
        assert_eq!(parse_memory("128M").unwrap(), MIN_MEM_SIZE);
        assert_eq!(parse_memory("512G").unwrap(), MAX_MEM_SIZE);
        for bad in [
            "127",
            "513G",
            "0",
            "",
            "G",
            "1T",
            "1.5G",
            "-1",
            "1K",
            "99999999999999999999",
            "17179869184G",
            "256 M",
            "size=",
            "1G,extra=1",
        ] {
            assert!(parse_memory(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cpu_counts() {
        assert_eq!(parse_smp("1").unwrap(), 1);
        assert_eq!(parse_smp("cpus=254").unwrap(), 254);
        for bad in [
            "0",
            "255",
            "256",
            "99999999999999999999999",
            "two",
            "cpus=",
            "4,maxcpus=8",
        ] {
            assert!(parse_smp(bad).is_err(), "{bad:?}");
        }
    }

    /// Found by the `cmdline` fuzz target: a feature name with a newline, given a bad value,
    /// was printed unquoted and broke the one-line error in two.
    #[test]
    fn a_bad_feature_value_is_reported_on_one_line() {
        let err = parse_cpu("host,x2\napic=maybe").unwrap_err();
        let message = err.to_string();
        assert!(!message.contains('\n'), "{message:?}");
        assert_eq!(
            message,
            r#"-cpu: invalid feature "x2\napic=maybe": expected FEATURE=on or FEATURE=off"#
        );
    }

    #[test]
    fn cpu_features() {
        let cpu = parse_cpu("host,-cx16,-popcnt,+x2apic,pdpe1gb=off").unwrap();
        assert_eq!(cpu.model, "host");
        assert_eq!(cpu.disabled, vec!["cx16", "popcnt", "pdpe1gb"]);
        assert_eq!(cpu.enabled, vec!["x2apic"]);
        assert_eq!(parse_cpu("host").unwrap(), CpuConfig::default());
        assert_eq!(
            parse_cpu("host,+cx16,-cx16"),
            Err(ConfigError::ConflictingCpuFeature("cx16".into()))
        );
        for bad in [
            "qemu64",
            "host,-cx16,-cx16",
            "host,cx16",
            "host,-",
            "host,-a b",
            "host,x=maybe",
            "-cx16",
        ] {
            assert!(parse_cpu(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn qmp_needs_unix_server_and_nowait() {
        assert_eq!(
            parse_qmp("unix:/tmp/q.sock,server,nowait").unwrap(),
            PathBuf::from("/tmp/q.sock")
        );
        assert_eq!(
            parse_qmp("unix:/tmp/q.sock,nowait,server").unwrap(),
            PathBuf::from("/tmp/q.sock")
        );
        for bad in [
            "unix:/tmp/q.sock",
            "unix:/tmp/q.sock,server",
            "unix:/tmp/q.sock,nowait",
            "tcp:127.0.0.1:4444,server,nowait",
            "unix:,server,nowait",
            "unix:/q,server,nowait,wait",
        ] {
            assert!(parse_qmp(bad).is_err(), "{bad:?}");
        }
        let err = parse_qmp("unix:/q,server").unwrap_err().to_string();
        assert!(err.contains("nowait"), "{err}");
    }

    #[test]
    fn machine_and_serial() {
        assert_eq!(parse_machine("microvm").unwrap(), "microvm");
        assert_eq!(parse_machine("type=microvm").unwrap(), "microvm");
        assert!(parse_machine("q35").is_err());
        assert!(parse_machine("microvm,accel=tcg").is_err());
        assert!(parse_serial("stdio").unwrap());
        assert!(parse_serial("pty").is_err());
    }
}
