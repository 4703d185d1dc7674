//! `stratovirt`: the micro-VM monitor's command-line entry point.
//!
//! Every failure ends the process with one line on stderr, `stratovirt: <message>` (the
//! error and its causes joined by ": "), and exit status 1. A guest reboot, or a `quit` from
//! the host, ends it with status 0.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context};
use log::LevelFilter;
use machine_manager::config::{parse_args, usage, version, ConfigError, VmConfig};
use micro_vm::block_devices::BlockDevices;
use micro_vm::process::{daemonize, PidFile};
use micro_vm::qmp_handler::QmpService;
use micro_vm::MicroVm;

fn main() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("stratovirt: internal error: {info}");
        std::process::exit(101);
    }));
    match run() {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            let message: Vec<String> = e.chain().map(|cause| cause.to_string()).collect();
            eprintln!("stratovirt: {}", message.join(": "));
            std::process::exit(1);
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args = std::env::args_os()
        .skip(1)
        .map(|arg| {
            arg.into_string()
                .map_err(|arg| anyhow!("argument {arg:?} is not valid UTF-8"))
        })
        .collect::<anyhow::Result<Vec<String>>>()?;
    let config = match parse_args(args) {
        Ok(config) => config,
        Err(ConfigError::Help) => {
            print!("{}", usage());
            return Ok(());
        }
        Err(ConfigError::Version) => {
            println!("{}", version());
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    if config.daemonize {
        daemonize()?;
    }
    let _pidfile = config.pidfile.as_deref().map(PidFile::create).transpose()?;
    init_logging(&config)?;
    let mut vm = MicroVm::new(&config)?;
    let blocks = Arc::new(Mutex::new(BlockDevices::attach(&mut vm, &config)?));
    let vm = Arc::new(vm);
    let qmp = QmpService::start(&config, &vm, blocks.clone())?;
    vm.start()?;
    let exit = vm.run()?;
    if let Some(qmp) = &qmp {
        qmp.announce_exit(&vm, exit);
    }
    log::info!("exiting: {exit:?}");
    Ok(())
}

/// `-D FILE` logs to FILE, `-D` to stderr, both at `info`; without `-D` only warnings and
/// errors reach stderr. `STRATOVIRT_LOG` overrides the level.
fn init_logging(config: &VmConfig) -> anyhow::Result<()> {
    let (path, level): (Option<&Path>, LevelFilter) = match &config.log {
        None => (None, LevelFilter::Warn),
        Some(path) => (path.as_deref(), LevelFilter::Info),
    };
    util::logger::init(path, level).with_context(|| match path {
        Some(path) => format!("cannot open the log file {}", path.display()),
        None => "cannot start logging".to_string(),
    })
}
