//! `stratovirt`: the micro-VM monitor's command-line entry point.
//!
//! Every failure ends the process with one line on stderr, `stratovirt: <message>` (the
//! error and its causes joined by ": "), and exit status 1. A guest reboot, a `quit` from
//! the host, or SIGTERM/SIGINT/SIGHUP end it with status 0, after the ordered shutdown.

use std::path::Path;

use anyhow::{anyhow, Context};
use log::LevelFilter;
use machine_manager::config::{parse_args, usage, version, ConfigError, VmConfig};
use micro_vm::process::{daemonize, DaemonReady, PidFile};
use micro_vm::Vmm;

fn main() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("stratovirt: internal error: {info}");
        std::process::exit(101);
    }));
    let mut daemon = None;
    match run(&mut daemon) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            let message: Vec<String> = e.chain().map(|cause| cause.to_string()).collect();
            let message = message.join(": ");
            // A daemon's stderr is /dev/null: the process that started it prints the error.
            if let Some(daemon) = daemon.take() {
                DaemonReady::failed(daemon, &message);
            }
            eprintln!("stratovirt: {message}");
            std::process::exit(1);
        }
    }
}

fn run(daemon: &mut Option<DaemonReady>) -> anyhow::Result<()> {
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
        *daemon = Some(daemonize()?);
    }
    // Before the pid file names this process: a SIGTERM from then on waits for the main
    // loop, which shuts the VMM down in order.
    micro_vm::signals::block()?;
    let _pidfile = config.pidfile.as_deref().map(PidFile::create).transpose()?;
    init_logging(&config)?;
    // The VMM shuts down in order however `run` ends (see micro_vm::vmm); the pid file goes
    // last.
    let vmm = Vmm::new(&config)?;
    vmm.start()?;
    if let Some(daemon) = daemon.take() {
        daemon.started();
    }
    let exit = vmm.run()?;
    log::info!("exiting: {exit:?}");
    Ok(())
}

/// `-D FILE` logs to FILE, `-D` to stderr, both at `info`; without `-D` only warnings and
/// errors reach stderr. `STRATOVIRT_LOG_LEVEL` (StratoVirt's variable; `STRATOVIRT_LOG` is
/// still read when it is unset) overrides the level, wherever the lines go.
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
