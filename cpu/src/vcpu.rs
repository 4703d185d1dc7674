//! A vCPU thread: runs `KVM_RUN`, dispatches port I/O and MMIO exits to the buses, and obeys
//! pause/resume/stop requests from other threads.
//!
//! ```text
//!            resume()            pause()
//!   Created ─────────► Running ◄─────────► Paused
//!      │                  │      resume()     │
//!      └──────────────────┴───────────────────┴──► Stopping   (stop(), or the guest ended)
//! ```
//!
//! Invariants:
//! - Only the vCPU thread runs `KVM_RUN`; other threads change the requested state under the
//!   control mutex, then *kick*: they set `kvm_run.immediate_exit` and send [`kick_signal`] to
//!   the thread, so a `KVM_RUN` in progress returns `EINTR` and one about to start returns at
//!   once. The thread clears `immediate_exit` before it looks at the state again, so no request
//!   is lost.
//! - `pause()` returns only once the thread has acknowledged it is parked outside `KVM_RUN`.
//! - A guest-ending exit (reset, shutdown, triple fault, emulation failure) is reported once
//!   through the [`VcpuEvent`] callback, and the thread ends.
//! - A set-up step given to [`Vcpu::spawn_with`] (the VMM installs the thread's seccomp filter
//!   there) runs on the vCPU thread before anything else, so no `KVM_RUN` ever runs without it.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use address_space::{Bus, GuestMemory};
use kvm_bindings::{CpuId, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::regs::{setup_lapic, setup_long_mode, setup_msrs, BootRegisters};
use crate::{CpuError, Result};

/// The lifecycle state of a vCPU (see the module diagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuState {
    /// Configured; its thread waits for the first `resume()`.
    Created,
    /// Running guest code.
    Running,
    /// Parked outside `KVM_RUN` until `resume()`.
    Paused,
    /// Ending: the thread leaves its loop (or has left it).
    Stopping,
}

/// What a vCPU reports when the guest ends the VM.
#[derive(Debug)]
pub enum VcpuEvent {
    /// The guest asked for a reset (`reboot`): the VM ends successfully.
    Reset,
    /// The guest powered off through KVM's system-event exit.
    Shutdown,
    /// The vCPU cannot continue; the error names the reason and the guest RIP.
    Failed(CpuError),
}

/// The callback a vCPU reports guest-ending events to: `(vcpu index, event)`.
pub type EventCallback = Arc<dyn Fn(u8, VcpuEvent) + Send + Sync>;

/// Why a vCPU thread's set-up step failed (see [`Vcpu::spawn_with`]).
pub type ThreadSetupError = Box<dyn std::error::Error + Send + Sync>;

/// How long `pause()` waits for a vCPU to park before giving up.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The signal that interrupts `KVM_RUN` on a vCPU thread.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn ignore_kick(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn install_kick_handler() -> Result<()> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result = register_signal_handler(kick_signal(), ignore_kick)
            .map_err(|e| CpuError::SignalHandler(std::io::Error::from_raw_os_error(e.errno())));
    });
    result
}

struct Control {
    state: VcpuState,
    /// The thread is parked (Created or Paused) and acknowledged it.
    parked: bool,
    /// Address of the thread's `kvm_run.immediate_exit` byte while its `VcpuFd` lives.
    immediate_exit: Option<usize>,
}

struct Shared {
    control: Mutex<Control>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A configured vCPU, not yet running.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
}

impl Vcpu {
    /// Creates vCPU `index` on `vm` with `cpuid`, MSRs and LAPIC LINT pins set up.
    pub fn new(vm: &VmFd, index: u8, cpuid: &CpuId, pio: Arc<Bus>, mmio: Arc<Bus>) -> Result<Vcpu> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|e| CpuError::Create(index, e))?;
        fd.set_cpuid2(cpuid).map_err(CpuError::SetCpuid)?;
        setup_msrs(&fd)?;
        setup_lapic(&fd)?;
        Ok(Vcpu {
            index,
            fd,
            pio,
            mmio,
        })
    }

    /// The CPUID table KVM actually applies (`KVM_GET_CPUID2`), which may differ from the
    /// one set (see [`crate::cpuid::unhonoured_features`]).
    pub fn effective_cpuid(&self) -> Result<CpuId> {
        self.fd
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(CpuError::GetCpuid)
    }

    /// Index (and APIC id) of this vCPU.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Starts this vCPU in long mode at the kernel's entry (the boot processor only; the
    /// others wait for the boot processor's INIT/SIPI in the in-kernel LAPIC).
    pub fn set_boot_registers(&self, mem: &GuestMemory, boot: &BootRegisters) -> Result<()> {
        setup_long_mode(&self.fd, mem, boot)
    }

    /// Starts the vCPU thread in state [`VcpuState::Created`]; it runs after `resume()`.
    pub fn spawn(self, on_event: EventCallback) -> Result<VcpuHandle> {
        self.spawn_with(on_event, || Ok(()))
    }

    /// Like [`Vcpu::spawn`], running `setup` first thing on the new thread; returns once it
    /// has run. If it fails, the thread ends and the spawn fails with
    /// [`CpuError::ThreadSetup`].
    pub fn spawn_with<S>(mut self, on_event: EventCallback, setup: S) -> Result<VcpuHandle>
    where
        S: FnOnce() -> std::result::Result<(), ThreadSetupError> + Send + 'static,
    {
        install_kick_handler()?;
        let shared = Arc::new(Shared {
            control: Mutex::new(Control {
                state: VcpuState::Created,
                parked: false,
                immediate_exit: Some(
                    immediate_exit_flag(self.fd.get_kvm_run()) as *const AtomicU8 as usize,
                ),
            }),
            changed: Condvar::new(),
        });
        let thread_shared = shared.clone();
        let index = self.index;
        let (started, outcome) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                if let Err(e) = setup() {
                    let _ = started.send(Err(e));
                    return;
                }
                // SAFETY: gettid has no preconditions.
                let _ = started.send(Ok(unsafe { libc::gettid() }));
                self.run_thread(&thread_shared, &on_event)
            })
            .map_err(|e| CpuError::Spawn(index, e))?;
        let tid = match outcome.recv() {
            Ok(Ok(tid)) => tid,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(CpuError::ThreadSetup(index, e));
            }
            Err(_) => 0,
        };
        Ok(VcpuHandle {
            index,
            tid,
            shared,
            thread: Some(thread),
        })
    }

    fn run_thread(mut self, shared: &Shared, on_event: &EventCallback) {
        let event = self.run_loop(shared);
        if event.is_none() {
            match self.fd.get_regs() {
                Ok(regs) => log::info!("vcpu{}: stopped at guest RIP {:#x}", self.index, regs.rip),
                Err(e) => log::debug!("vcpu{}: stopped; registers unreadable: {e}", self.index),
            }
        }
        {
            let mut control = shared.lock();
            control.state = VcpuState::Stopping;
            control.parked = false;
            // The `VcpuFd` (and its kvm_run mapping) is dropped when this thread ends.
            control.immediate_exit = None;
            shared.changed.notify_all();
        }
        if let Some(event) = event {
            on_event(self.index, event);
        }
    }

    /// Runs until stopped (returns `None`) or until the guest ends the VM.
    fn run_loop(&mut self, shared: &Shared) -> Option<VcpuEvent> {
        loop {
            if !wait_until_runnable(shared) {
                return None;
            }
            match self.run_once() {
                Ok(None) => {}
                Ok(Some(event)) => return Some(event),
                Err(e) => return Some(VcpuEvent::Failed(e)),
            }
        }
    }

    fn run_once(&mut self) -> Result<Option<VcpuEvent>> {
        let index = self.index;
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                immediate_exit_flag(self.fd.get_kvm_run()).store(0, Ordering::SeqCst);
                return Ok(None);
            }
            Err(e) => return Err(CpuError::Run(index, e)),
        };
        let failure = match exit {
            VcpuExit::IoIn(port, data) => {
                if !self.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                    util::trace_ratelimited!("vcpu{index}: read from unmapped port {port:#x}");
                }
                return Ok(None);
            }
            VcpuExit::IoOut(port, data) => {
                if !self.pio.write(u64::from(port), data) {
                    util::trace_ratelimited!(
                        "vcpu{index}: write {data:x?} to unmapped port {port:#x}"
                    );
                }
                return Ok(None);
            }
            VcpuExit::MmioRead(addr, data) => {
                if !self.mmio.read(addr, data) {
                    data.fill(0xff);
                    util::debug_ratelimited!("vcpu{index}: read from unmapped MMIO {addr:#x}");
                }
                return Ok(None);
            }
            VcpuExit::MmioWrite(addr, data) => {
                if !self.mmio.write(addr, data) {
                    util::debug_ratelimited!("vcpu{index}: write to unmapped MMIO {addr:#x}");
                }
                return Ok(None);
            }
            VcpuExit::Hlt => {
                util::trace_ratelimited!("vcpu{index}: HLT exit");
                return Ok(None);
            }
            VcpuExit::SystemEvent(kind, _) if kind == KVM_SYSTEM_EVENT_RESET => {
                return Ok(Some(VcpuEvent::Reset));
            }
            VcpuExit::SystemEvent(kind, _) if kind == KVM_SYSTEM_EVENT_SHUTDOWN => {
                return Ok(Some(VcpuEvent::Shutdown));
            }
            VcpuExit::SystemEvent(kind, _) => ExitFailure::SystemEvent(kind),
            VcpuExit::Shutdown => ExitFailure::TripleFault,
            VcpuExit::InternalError => ExitFailure::Internal,
            VcpuExit::FailEntry(reason, _) => ExitFailure::FailEntry(reason),
            VcpuExit::Unsupported(reason) => ExitFailure::Unexpected(format!("exit {reason}")),
            other => ExitFailure::Unexpected(format!("{other:?}")),
        };
        Err(self.failure(failure))
    }

    /// Turns a fatal exit into an error naming the reason and the guest RIP.
    fn failure(&mut self, failure: ExitFailure) -> CpuError {
        let reason = match failure {
            ExitFailure::TripleFault => "triple fault (KVM_EXIT_SHUTDOWN)".to_string(),
            ExitFailure::Internal => {
                // SAFETY: after KVM_EXIT_INTERNAL_ERROR, KVM filled the `internal` member of
                // the exit union; `ndata` is clamped to the array length below.
                let internal = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal };
                let ndata = (internal.ndata as usize).min(internal.data.len());
                let kind = match internal.suberror {
                    1 => "instruction emulation failure",
                    2 => "simultaneous exceptions",
                    3 => "delivery event failure",
                    _ => "internal error",
                };
                format!(
                    "KVM {kind} (suberror {}, data {:x?})",
                    internal.suberror,
                    &internal.data[..ndata]
                )
            }
            ExitFailure::FailEntry(reason) => {
                format!("VM entry failed (hardware reason {reason:#x})")
            }
            ExitFailure::SystemEvent(kind) => format!("unknown system event {kind}"),
            ExitFailure::Unexpected(what) => format!("unexpected exit {what}"),
        };
        let rip = self.fd.get_regs().map(|r| r.rip).ok();
        CpuError::GuestFailed {
            index: self.index,
            reason,
            rip,
        }
    }
}

/// `kvm_run.immediate_exit` as an atomic: the vCPU thread and kickers both write it.
fn immediate_exit_flag(run: &mut kvm_bindings::kvm_run) -> &AtomicU8 {
    // SAFETY: `AtomicU8` has the layout of `u8`; the exclusive borrow of `run` proves the
    // byte is live, and every other writer goes through an `AtomicU8` as well.
    unsafe { &*(&mut run.immediate_exit as *mut u8 as *const AtomicU8) }
}

enum ExitFailure {
    TripleFault,
    Internal,
    FailEntry(u64),
    SystemEvent(u32),
    Unexpected(String),
}

/// Blocks while the vCPU is Created or Paused; returns `false` once it must stop.
fn wait_until_runnable(shared: &Shared) -> bool {
    let mut control = shared.lock();
    loop {
        match control.state {
            VcpuState::Running => {
                control.parked = false;
                return true;
            }
            VcpuState::Stopping => return false,
            VcpuState::Created | VcpuState::Paused => {
                if !control.parked {
                    control.parked = true;
                    shared.changed.notify_all();
                }
                control = shared
                    .changed
                    .wait(control)
                    .unwrap_or_else(|e| e.into_inner());
            }
        }
    }
}

/// Controls a running vCPU thread from other threads.
pub struct VcpuHandle {
    index: u8,
    tid: i32,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl VcpuHandle {
    /// Index of the vCPU.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The kernel id of the vCPU's thread (QMP `query-cpus`' `thread_id`).
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// The current state.
    pub fn state(&self) -> VcpuState {
        self.shared.lock().state
    }

    /// Runs the vCPU (from Created or Paused).
    pub fn resume(&self) -> Result<()> {
        let mut control = self.shared.lock();
        match control.state {
            VcpuState::Created | VcpuState::Paused => {
                control.state = VcpuState::Running;
                self.shared.changed.notify_all();
                Ok(())
            }
            state => Err(CpuError::BadTransition {
                index: self.index,
                from: state,
                to: VcpuState::Running,
            }),
        }
    }

    /// Parks the vCPU outside `KVM_RUN`; returns once it is parked.
    pub fn pause(&self) -> Result<()> {
        let mut control = self.shared.lock();
        match control.state {
            VcpuState::Running => {}
            VcpuState::Paused => return Ok(()),
            state => {
                return Err(CpuError::BadTransition {
                    index: self.index,
                    from: state,
                    to: VcpuState::Paused,
                })
            }
        }
        control.state = VcpuState::Paused;
        control.parked = false;
        self.kick(&control);
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        while !control.parked && control.state == VcpuState::Paused {
            let now = Instant::now();
            if now >= deadline {
                return Err(CpuError::PauseTimeout(self.index));
            }
            control = self
                .shared
                .changed
                .wait_timeout(control, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    /// Asks the vCPU thread to end (from any state); [`VcpuHandle::join`] waits for it.
    pub fn stop(&self) {
        let mut control = self.shared.lock();
        if control.state != VcpuState::Stopping {
            control.state = VcpuState::Stopping;
            self.shared.changed.notify_all();
        }
        self.kick(&control);
    }

    /// Stops the vCPU and waits for its thread to end.
    pub fn join(&mut self) {
        self.stop();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("vcpu{}: thread panicked", self.index);
            }
        }
    }

    /// Interrupts a `KVM_RUN` in progress (or about to start). Called with the control lock
    /// held, so the thread cannot drop its `VcpuFd` meanwhile.
    fn kick(&self, control: &Control) {
        let (Some(immediate_exit), Some(thread)) = (control.immediate_exit, &self.thread) else {
            return;
        };
        // SAFETY: `immediate_exit` points to the flag in the thread's kvm_run mapping, which
        // lives until the thread clears the address under the lock we hold.
        let flag = unsafe { &*(immediate_exit as *const AtomicU8) };
        flag.store(1, Ordering::SeqCst);
        if let Err(e) = thread.kill(kick_signal()) {
            log::warn!("vcpu{}: cannot signal its thread: {e}", self.index);
        }
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        self.join();
    }
}
