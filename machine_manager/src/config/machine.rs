//! Values of the machine-wide options: `-machine`, `-accel`, `-m`, `-smp`, `-cpu`, `-serial`,
//! `-qmp`, `-uuid`, and the options libvirt passes that change nothing here.

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

/// The only accelerator.
pub const ACCEL: &str = "kvm";

/// What `-machine` sets besides the type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MachineOptions {
    /// `dump-guest-core` (default on).
    pub dump_guest_core: bool,
    /// `mem-share` (default off).
    pub mem_share: bool,
}

/// `-machine [type=]microvm[,dump-guest-core=on|off][,mem-share=on|off][,accel=kvm][,usb=off]`,
/// StratoVirt's keys (`usb=off` is what libvirt passes; there is no USB).
pub(crate) fn parse_machine(text: &str) -> Result<(String, MachineOptions)> {
    let mut kv = KvList::parse("-machine", text)?;
    let machine = kv.take_implied("type")?.ok_or_else(|| kv.missing("type"))?;
    if machine != MACHINE_TYPE {
        return Err(kv.invalid("type", &machine, MACHINE_TYPE));
    }
    let options = MachineOptions {
        dump_guest_core: kv.take_bool("dump-guest-core")?.unwrap_or(true),
        mem_share: kv.take_bool("mem-share")?.unwrap_or(false),
    };
    if let Some(accel) = kv.take("accel") {
        if accel != ACCEL {
            return Err(kv.invalid("accel", &accel, "kvm (the only accelerator)"));
        }
    }
    if let Some(usb) = kv.take("usb") {
        if usb != "off" {
            return Err(kv.invalid("usb", &usb, "off (the micro VM has no USB)"));
        }
    }
    kv.finish()?;
    Ok((machine, options))
}

/// `-accel [accel=]kvm`.
pub(crate) fn parse_accel(text: &str) -> Result<()> {
    let mut kv = KvList::parse("-accel", text)?;
    let accel = kv
        .take_implied("accel")?
        .ok_or_else(|| kv.missing("accel"))?;
    if accel != ACCEL {
        return Err(kv.invalid("accel", &accel, "kvm (the only accelerator)"));
    }
    kv.finish()
}

/// `-uuid UUID`: the 8-4-4-4-12 hexadecimal form.
pub(crate) fn parse_uuid(text: &str) -> Result<String> {
    let groups: Vec<&str> = text.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let hex = groups
        .iter()
        .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()));
    if lengths == [8, 4, 4, 4, 12] && hex {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(kv_invalid(
            "-uuid",
            "uuid",
            text,
            "a UUID such as 123e4567-e89b-12d3-a456-426614174000",
        ))
    }
}

/// Options libvirt (and QEMU habits) pass that StratoVirt accepts and that change nothing on
/// the micro VM; each takes an optional value. Values that would ask for something this VMM
/// does not do (locking guest memory) are refused instead.
pub const LIBVIRT_NO_OPS: &[&str] = &[
    "overcommit",
    "no-user-config",
    "nodefaults",
    "sandbox",
    "msg",
    "rtc",
    "no-shutdown",
    "boot",
    "nographic",
    "realtime",
    "display",
    "usb",
];

/// Checks the value of one of [`LIBVIRT_NO_OPS`].
pub(crate) fn check_no_op(name: &str, value: Option<&str>) -> Result<()> {
    let option = format!("-{name}");
    let locking = match name {
        "realtime" => Some("mlock"),
        "overcommit" => Some("mem-lock"),
        _ => None,
    };
    if let (Some(key), Some(value)) = (locking, value) {
        let mut kv = KvList::parse(&option, value)?;
        if let Some(lock) = kv.take_bool(key)? {
            if lock {
                return Err(kv.invalid(key, "on", "off (guest memory is never locked)"));
            }
        }
        kv.finish()?;
    }
    if name == "display" {
        if let Some(value) = value.filter(|v| *v != "none") {
            return Err(kv_invalid(
                &option,
                "type",
                value,
                "none (there is no display)",
            ));
        }
    }
    Ok(())
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

/// How the vCPUs are arranged: `sockets` of `cores` of `threads` (`-smp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTopology {
    /// Sockets (packages).
    pub sockets: u8,
    /// Cores per socket.
    pub cores: u8,
    /// Threads per core.
    pub threads: u8,
}

impl CpuTopology {
    /// One socket of `cpus` single-thread cores (what `-smp N` alone means).
    pub fn flat(cpus: u8) -> CpuTopology {
        CpuTopology {
            sockets: 1,
            cores: cpus.max(1),
            threads: 1,
        }
    }

    /// Number of vCPUs: `sockets * cores * threads`.
    pub fn cpus(&self) -> usize {
        usize::from(self.sockets) * usize::from(self.cores) * usize::from(self.threads)
    }
}

/// `-smp [cpus=]N[,maxcpus=M][,sockets=S][,dies=1][,clusters=1][,cores=C][,threads=T]`,
/// StratoVirt's keys, completed as StratoVirt completes them (a missing or zero count is
/// derived from the others), then checked:
/// - `sockets * dies * clusters * cores * threads` equals `maxcpus`, and `cpus <= maxcpus <=
///   254`;
/// - `maxcpus` equals `cpus`: the micro VM cannot hot-plug vCPUs;
/// - `dies` and `clusters` are 1, and the APIC ids stay dense (`threads` a power of two, and
///   so is `cores` when there is more than one socket), so vCPU `i` has APIC id `i`.
pub(crate) fn parse_smp(text: &str) -> Result<(u8, CpuTopology)> {
    let mut kv = KvList::parse("-smp", text)?;
    let value = kv.take_implied("cpus")?.ok_or_else(|| kv.missing("cpus"))?;
    let cpus = parse_u64(&value)
        .filter(|n| (1..=u64::from(MAX_CPUS)).contains(n))
        .map(|n| n as u8)
        .ok_or_else(|| kv_invalid("-smp", "cpus", &value, "a number from 1 to 254"))?;
    let mut count = |key: &str, default: u64| -> Result<u64> {
        match kv.take(key) {
            None => Ok(default),
            Some(value) => parse_u64(&value)
                .filter(|n| *n <= u64::from(MAX_CPUS))
                .ok_or_else(|| kv_invalid("-smp", key, &value, "a number from 0 to 254")),
        }
    };
    let max_cpus = count("maxcpus", 0)?;
    let mut sockets = count("sockets", 0)?;
    let dies = count("dies", 1)?;
    let clusters = count("clusters", 1)?;
    let mut cores = count("cores", 0)?;
    let mut threads = count("threads", 0)?;
    kv.finish()?;
    if dies == 0 || clusters == 0 {
        return Err(ConfigError::BadTopology(
            "dies and clusters must be at least 1".into(),
        ));
    }
    // StratoVirt's completion: maxcpus from the product (or cpus), then the missing count.
    let max_cpus = match max_cpus {
        0 => match sockets * dies * clusters * cores * threads {
            0 => u64::from(cpus),
            product => product,
        },
        given => given,
    };
    if cores == 0 {
        sockets = sockets.max(1);
        threads = threads.max(1);
        cores = max_cpus / (sockets * dies * clusters * threads);
    } else if sockets == 0 {
        threads = threads.max(1);
        sockets = max_cpus / (dies * clusters * cores * threads);
    }
    if threads == 0 {
        threads = max_cpus / (sockets * dies * clusters * cores).max(1);
    }
    if !(u64::from(cpus)..=u64::from(MAX_CPUS)).contains(&max_cpus) {
        return Err(ConfigError::BadTopology(format!(
            "maxcpus {max_cpus} must be from cpus ({cpus}) to {MAX_CPUS}"
        )));
    }
    if sockets * dies * clusters * cores * threads != max_cpus {
        return Err(ConfigError::BadTopology(format!(
            "sockets ({sockets}) * dies ({dies}) * clusters ({clusters}) * cores ({cores}) * \
             threads ({threads}) must equal maxcpus ({max_cpus})"
        )));
    }
    if max_cpus != u64::from(cpus) {
        return Err(ConfigError::BadTopology(format!(
            "maxcpus {max_cpus} is above cpus {cpus}: the micro VM cannot hot-plug vCPUs"
        )));
    }
    if dies != 1 || clusters != 1 {
        return Err(ConfigError::BadTopology(
            "dies and clusters other than 1 are not supported (x86 micro VM)".into(),
        ));
    }
    if !threads.is_power_of_two() || (sockets > 1 && !cores.is_power_of_two()) {
        return Err(ConfigError::BadTopology(format!(
            "threads ({threads}) must be a power of two, and so must cores ({cores}) with more \
             than one socket: vCPU i has APIC id i"
        )));
    }
    // Each count is at most max_cpus <= 254 (the product is max_cpus and none is 0).
    Ok((
        cpus,
        CpuTopology {
            sockets: sockets as u8,
            cores: cores as u8,
            threads: threads as u8,
        },
    ))
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
        assert_eq!(parse_smp("1").unwrap(), (1, CpuTopology::flat(1)));
        assert_eq!(
            parse_smp("cpus=254").unwrap(),
            (254, CpuTopology::flat(254))
        );
        for bad in [
            "0",
            "255",
            "256",
            "99999999999999999999999",
            "two",
            "cpus=",
            "4,cpus=4",
            "4,sockets=",
            "4,sockets=-1",
            "4,cores=255",
            "4,bogus=1",
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
    fn topology_is_completed_and_checked_as_stratovirt_does() {
        let topo = |sockets, cores, threads| CpuTopology {
            sockets,
            cores,
            threads,
        };
        assert_eq!(parse_smp("4,maxcpus=4").unwrap(), (4, topo(1, 4, 1)));
        assert_eq!(parse_smp("4,sockets=2").unwrap(), (4, topo(2, 2, 1)));
        assert_eq!(parse_smp("4,cores=2").unwrap(), (4, topo(2, 2, 1)));
        assert_eq!(
            parse_smp("8,sockets=2,cores=2").unwrap(),
            (8, topo(2, 2, 2))
        );
        assert_eq!(
            parse_smp("8,sockets=2,cores=2,threads=2,dies=1,clusters=1,maxcpus=8").unwrap(),
            (8, topo(2, 2, 2))
        );
        assert_eq!(parse_smp("3").unwrap(), (3, topo(1, 3, 1)));
        assert_eq!(
            parse_smp("6,sockets=1,cores=3,threads=2").unwrap(),
            (6, topo(1, 3, 2))
        );
        for (bad, needle) in [
            ("4,maxcpus=8", "hot-plug"),
            ("4,sockets=2,cores=2,threads=2", "hot-plug"),
            ("4,maxcpus=2", "from cpus"),
            ("4,sockets=3", "must equal maxcpus"),
            ("4,dies=2,cores=2", "dies and clusters"),
            ("4,clusters=0", "at least 1"),
            ("6,cores=2,threads=3", "power of two"),
            ("6,cores=3", "power of two"),
        ] {
            let err = parse_smp(bad).unwrap_err();
            assert!(matches!(err, ConfigError::BadTopology(_)), "{bad}: {err}");
            assert!(err.to_string().contains(needle), "{bad}: {err}");
        }
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
        let defaults = MachineOptions {
            dump_guest_core: true,
            mem_share: false,
        };
        assert_eq!(
            parse_machine("microvm").unwrap(),
            ("microvm".into(), defaults)
        );
        assert_eq!(
            parse_machine("type=microvm").unwrap(),
            ("microvm".into(), defaults)
        );
        assert_eq!(
            parse_machine("type=microvm,dump-guest-core=off,mem-share=on,accel=kvm,usb=off")
                .unwrap(),
            (
                "microvm".into(),
                MachineOptions {
                    dump_guest_core: false,
                    mem_share: true
                }
            )
        );
        for bad in [
            "q35",
            "microvm,accel=tcg",
            "microvm,usb=on",
            "microvm,mem-share=maybe",
            "microvm,dump_guest_core=off",
            "microvm,gic-version=3",
        ] {
            assert!(parse_machine(bad).is_err(), "{bad}");
        }
        parse_accel("kvm").unwrap();
        parse_accel("accel=kvm").unwrap();
        assert!(parse_accel("tcg").is_err());
        assert!(parse_accel("kvm,thread=single").is_err());
        assert!(parse_serial("stdio").unwrap());
        assert!(parse_serial("pty").is_err());
    }

    #[test]
    fn uuids_and_libvirt_no_ops() {
        assert_eq!(
            parse_uuid("123E4567-e89b-12d3-a456-426614174000").unwrap(),
            "123e4567-e89b-12d3-a456-426614174000"
        );
        for bad in [
            "",
            "123",
            "123e4567e89b12d3a456426614174000",
            "g23e4567-e89b-12d3-a456-426614174000",
        ] {
            assert!(parse_uuid(bad).is_err(), "{bad}");
        }
        for (name, value) in [
            ("realtime", Some("mlock=off")),
            ("overcommit", Some("mem-lock=off")),
            ("display", Some("none")),
            ("display", None),
            ("nodefaults", None),
            ("rtc", Some("base=utc")),
            ("sandbox", Some("on,obsolete=deny")),
        ] {
            check_no_op(name, value).unwrap();
        }
        for (name, value) in [
            ("realtime", Some("mlock=on")),
            ("overcommit", Some("mem-lock=on")),
            ("overcommit", Some("cpu-pm=on")),
            ("display", Some("gtk")),
        ] {
            assert!(check_no_op(name, value).is_err(), "-{name} {value:?}");
        }
    }
}
