//! The micro VM itself: KVM VM, guest RAM, legacy devices, virtio-mmio slots, vCPUs, and the
//! main event loop that runs until the guest or the host ends the VM.
//!
//! Invariants:
//! - The first reason to end the VM wins (guest reset, guest shutdown, host quit, vCPU
//!   failure); later ones are ignored. Recording it wakes the main loop through one eventfd.
//! - vCPU threads are joined before the VM and guest RAM go away (field order of
//!   [`MicroVm`]: the lifecycle, holding the vCPUs, drops first).
//! - With seccomp on (the default), every thread the machine starts installs its role's filter
//!   first thing ([`crate::seccomp`]): vCPUs before their first `KVM_RUN`, iothreads before
//!   their loop, the workers of `aio=threads` drives before their first request (through
//!   [`MicroVm::worker_setup`]); [`MicroVm::start`] installs the main thread's filter on its
//!   caller after the vCPU threads exist and before they run, so the thread that calls
//!   `start` must be the one that then calls [`MicroVm::run`] and nothing else.
//! - virtio-mmio slot `i` lives at `VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE` with GSI
//!   `FIRST_VIRTIO_GSI + i`, and is announced on the guest command line in slot order.

use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use address_space::{Bus, BusDevice, GuestMemory, MemoryOptions};
use boot_loader::{BootConfig, BootLayout, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};
use cpu::{BootRegisters, CpuError, CpuModel, Vcpu, VcpuEvent, VcpuHandle};
use device_model::legacy::{
    Serial, I8042, I8042_PORT_BASE, I8042_PORT_LEN, SERIAL_IRQ, SERIAL_PORT_BASE, SERIAL_PORT_LEN,
};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use machine_manager::config::{CpuTopology, VmConfig, MACHINE_TYPE};
use util::aio::WorkerSetup;
use util::event_loop::{EventLoop, HandlerAction};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::seccomp::{Sandbox, ThreadRole};
use crate::signals::TerminationSignals;
use crate::stdio::StdinConsole;
use crate::{MachineError, Result};

/// Guest address of the TSS pages KVM needs on Intel hosts (below the 4 GiB BIOS area).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// Guest address of KVM's identity-map page, just below the TSS pages.
const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
/// GSI of the first virtio-mmio device; the IOAPIC has 24 pins.
pub const FIRST_VIRTIO_GSI: u32 = 5;
/// Number of virtio-mmio slots the IOAPIC pins allow.
pub const MAX_MMIO_SLOTS: usize = 24 - FIRST_VIRTIO_GSI as usize;

/// The lifecycle state of the VM as QMP reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Built, vCPUs not started.
    Created,
    /// vCPUs running.
    Running,
    /// vCPUs parked (`-S`, or QMP `stop`).
    Paused,
    /// The VM has ended.
    Shutdown,
}

/// Why the VM ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    /// The guest rebooted (`reboot=k`: i8042 reset, or KVM's reset event).
    GuestReset,
    /// The guest powered off through KVM's shutdown event.
    GuestShutdown,
    /// The host asked the VM to end (QMP `quit`).
    HostQuit,
    /// QMP `system_reset`: a micro VM ends rather than reboots (as StratoVirt's).
    HostReset,
    /// QMP `system_powerdown`: with no ACPI for the guest, the micro VM ends.
    HostPowerdown,
    /// The VMM received a termination signal (SIGTERM, SIGINT or SIGHUP).
    Signal(i32),
}

/// A virtio-mmio device's place in the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    /// Slot index (0 = the first `virtio_mmio.device=` entry).
    pub index: usize,
    /// Guest address of the register window.
    pub base: u64,
    /// Size of the register window.
    pub size: u64,
    /// The device's interrupt line (bind an irqfd to it with [`MicroVm::vm_fd`]).
    pub gsi: u32,
}

impl MmioSlot {
    /// The slot's entry for the guest command line (`virtio_mmio.device=4K@0xd0000000:5`).
    pub fn cmdline_entry(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            self.size / 1024,
            self.base,
            self.gsi
        )
    }
}

/// What ended the VM; the first reason recorded wins.
struct ExitSignal {
    reason: Mutex<Option<std::result::Result<VmExit, CpuError>>>,
    event: EventFd,
}

impl ExitSignal {
    fn record(&self, reason: std::result::Result<VmExit, CpuError>) {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            match &reason {
                Ok(exit) => log::info!("VM ending: {exit:?}"),
                Err(e) => log::info!("VM ending: {e}"),
            }
            *slot = Some(reason);
        }
        drop(slot);
        if let Err(e) = self.event.write(1) {
            log::error!("cannot wake the main loop: {e}");
        }
    }

    fn take(&self) -> Option<std::result::Result<VmExit, CpuError>> {
        self.reason.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

struct Lifecycle {
    state: VmState,
    /// Paused because a block request failed with an error policy of `stop`.
    io_error: bool,
    vcpus: Vec<VcpuHandle>,
}

/// Parts of the configuration the machine keeps until boot.
struct BootSettings {
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    cmdline: String,
    cpus: u8,
    topology: CpuTopology,
    cpu_model: CpuModel,
    start_paused: bool,
}

/// The micro VM.
pub struct MicroVm {
    lifecycle: Mutex<Lifecycle>,
    settings: BootSettings,
    mmio_slots: Vec<MmioSlot>,
    boot_cmdline: Mutex<String>,
    exit: Arc<ExitSignal>,
    event_loop: Arc<EventLoop>,
    _console: Option<StdinConsole>,
    serial: Arc<Mutex<Serial>>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    vm: VmFd,
    kvm: Kvm,
    mem: Arc<GuestMemory>,
    started: Instant,
    sandbox: Option<Sandbox>,
}

impl MicroVm {
    /// Builds the machine of `config`: the KVM VM, its RAM and interrupt controllers, the
    /// serial console and the i8042. Virtio devices come next ([`MicroVm::add_mmio_device`]),
    /// then [`MicroVm::start`].
    pub fn new(config: &VmConfig) -> Result<MicroVm> {
        if config.machine_type != MACHINE_TYPE {
            return Err(MachineError::MachineType(config.machine_type.clone()));
        }
        let kernel = config.kernel.clone().ok_or(MachineError::NoKernel)?;
        let topology = config.topology.unwrap_or(CpuTopology::flat(config.cpus));
        if topology.cpus() != usize::from(config.cpus) {
            return Err(MachineError::Topology {
                cpus: config.cpus,
                topology,
            });
        }
        let sandbox = if config.disable_seccomp {
            log::info!("seccomp disabled (-disable-seccomp)");
            None
        } else {
            Some(Sandbox::new()?)
        };
        let cpu_model = CpuModel::new(
            &config.cpu.model,
            &config.cpu.disabled,
            &config.cpu.enabled,
            cpu::host_is_pvm(),
        )?;
        let started = Instant::now();
        let kvm = Kvm::new().map_err(MachineError::OpenKvm)?;
        let vm = kvm.create_vm().map_err(MachineError::CreateVm)?;
        let setup = |step| move |source| MachineError::VmSetup { step, source };
        vm.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(setup("KVM_SET_TSS_ADDR"))?;
        vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(setup("KVM_SET_IDENTITY_MAP_ADDR"))?;
        vm.create_irq_chip().map_err(setup("KVM_CREATE_IRQCHIP"))?;
        vm.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(setup("KVM_CREATE_PIT2"))?;

        let options = MemoryOptions {
            prealloc: config.mem_prealloc,
            shared: config.mem_share,
            exclude_from_core_dump: !config.dump_guest_core,
        };
        let mem = Arc::new(
            GuestMemory::with_options(&boot_loader::ram_layout(config.mem_size), &options)
                .map_err(|source| MachineError::GuestMemory {
                    size: config.mem_size,
                    source,
                })?,
        );
        for (slot, region) in mem.regions().iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.guest_base(),
                memory_size: region.size(),
                userspace_addr: region.host_address(),
                flags: 0,
            };
            // SAFETY: the host range is a mapping owned by `mem`, which the machine keeps
            // until the VM is closed (field order of `MicroVm`: `vm` drops before `mem`).
            unsafe { vm.set_user_memory_region(region) }
                .map_err(setup("KVM_SET_USER_MEMORY_REGION"))?;
        }

        let event_loop = EventLoop::new()?;
        let exit = Arc::new(ExitSignal {
            reason: Mutex::new(None),
            event: EventFd::new(EFD_NONBLOCK).map_err(|e| MachineError::EventFd("VM exit", e))?,
        });
        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());

        let serial_irq =
            EventFd::new(EFD_NONBLOCK).map_err(|e| MachineError::EventFd("serial", e))?;
        vm.register_irqfd(&serial_irq, SERIAL_IRQ)
            .map_err(|source| MachineError::Irqfd {
                device: "serial".into(),
                gsi: SERIAL_IRQ,
                source,
            })?;
        let output: Box<dyn Write + Send> = if config.serial_stdio {
            Box::new(std::io::stdout())
        } else {
            Box::new(std::io::sink())
        };
        let serial = Arc::new(Mutex::new(Serial::new(serial_irq, output)));
        pio.insert(SERIAL_PORT_BASE, SERIAL_PORT_LEN, serial.clone())
            .map_err(|source| MachineError::Bus {
                device: "serial",
                source,
            })?;
        let console = if config.serial_stdio {
            StdinConsole::attach(&event_loop, serial.clone())?
        } else {
            None
        };

        let reset = EventFd::new(EFD_NONBLOCK).map_err(|e| MachineError::EventFd("i8042", e))?;
        let i8042 = Arc::new(Mutex::new(I8042::new(
            reset
                .try_clone()
                .map_err(|e| MachineError::EventFd("i8042", e))?,
        )));
        pio.insert(I8042_PORT_BASE, I8042_PORT_LEN, i8042)
            .map_err(|source| MachineError::Bus {
                device: "i8042",
                source,
            })?;
        let reset_exit = exit.clone();
        event_loop.add(
            "i8042-reset",
            reset.as_raw_fd(),
            EventSet::IN,
            Box::new(move |_| {
                let _ = reset.read();
                reset_exit.record(Ok(VmExit::GuestReset));
                HandlerAction::Remove
            }),
        )?;
        let signals = TerminationSignals::new()?;
        let signal_exit = exit.clone();
        event_loop.add(
            "termination-signals",
            signals.as_raw_fd(),
            EventSet::IN,
            Box::new(move |_| {
                if let Some(signal) = signals.read() {
                    signal_exit.record(Ok(VmExit::Signal(signal)));
                }
                HandlerAction::Keep
            }),
        )?;
        let loop_for_exit = event_loop.clone();
        let exit_event = exit
            .event
            .try_clone()
            .map_err(|e| MachineError::EventFd("VM exit", e))?;
        event_loop.add(
            "vm-exit",
            exit.event.as_raw_fd(),
            EventSet::IN,
            Box::new(move |_| {
                let _ = exit_event.read();
                loop_for_exit.stop();
                HandlerAction::Keep
            }),
        )?;

        Ok(MicroVm {
            lifecycle: Mutex::new(Lifecycle {
                state: VmState::Created,
                io_error: false,
                vcpus: Vec::new(),
            }),
            settings: BootSettings {
                kernel,
                initrd: config.initrd.clone(),
                cmdline: config.cmdline.clone(),
                cpus: config.cpus,
                topology,
                cpu_model,
                start_paused: config.start_paused,
            },
            mmio_slots: Vec::new(),
            boot_cmdline: Mutex::new(String::new()),
            exit,
            event_loop,
            _console: console,
            serial,
            pio,
            mmio,
            vm,
            kvm,
            mem,
            started,
            sandbox,
        })
    }

    /// The seccomp filters the machine's threads install, `None` with `-disable-seccomp`.
    pub fn sandbox(&self) -> Option<&Sandbox> {
        self.sandbox.as_ref()
    }

    /// What the workers of the machine's `aio=threads` engines run first: their seccomp
    /// filter, or nothing with `-disable-seccomp`.
    pub fn worker_setup(&self) -> WorkerSetup {
        self.sandbox
            .as_ref()
            .map(Sandbox::worker_setup)
            .unwrap_or_default()
    }

    /// Guest RAM, for devices that access it.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// The KVM VM, for binding device interrupts (`register_irqfd`) and ioeventfds.
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm
    }

    /// The main event loop, for device handlers (queue notifications, completions).
    pub fn event_loop(&self) -> &Arc<EventLoop> {
        &self.event_loop
    }

    /// The virtio-mmio slots, in the order the guest command line announces them.
    pub fn mmio_slots(&self) -> &[MmioSlot] {
        &self.mmio_slots
    }

    /// Puts `device` in the next virtio-mmio slot (before [`MicroVm::start`]); the caller binds
    /// the device's interrupt eventfd to the returned slot's GSI.
    pub fn add_mmio_device(&mut self, device: Arc<Mutex<dyn BusDevice>>) -> Result<MmioSlot> {
        let index = self.mmio_slots.len();
        if index >= MAX_MMIO_SLOTS {
            return Err(MachineError::TooManyMmioDevices(MAX_MMIO_SLOTS));
        }
        let slot = MmioSlot {
            index,
            base: VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE,
            size: VIRTIO_MMIO_SIZE,
            gsi: FIRST_VIRTIO_GSI + index as u32,
        };
        self.mmio
            .insert(slot.base, slot.size, device)
            .map_err(|source| MachineError::Bus {
                device: "virtio-mmio",
                source,
            })?;
        self.mmio_slots.push(slot);
        Ok(slot)
    }

    /// The command line the guest gets: the user's `-append`, then `guest_params` (CPU
    /// features to clear, on hosts whose KVM cannot hide them), then one
    /// `virtio_mmio.device=` entry per slot.
    fn compose_cmdline(&self, guest_params: Option<String>) -> String {
        let mut words: Vec<String> = Vec::new();
        let user = self.settings.cmdline.trim();
        if !user.is_empty() {
            words.push(user.to_string());
        }
        words.extend(guest_params);
        words.extend(self.mmio_slots.iter().map(MmioSlot::cmdline_entry));
        words.join(" ")
    }

    /// The command line the guest was booted with (empty before [`MicroVm::start`]).
    pub fn guest_cmdline(&self) -> String {
        self.boot_cmdline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Loads the kernel, creates the vCPUs and starts them (or leaves them paused with `-S`).
    /// With seccomp on, the calling thread runs under the main thread's filter from here on
    /// (see the module documentation).
    pub fn start(&self) -> Result<()> {
        let mut lifecycle = self.lock_lifecycle();
        if lifecycle.state != VmState::Created {
            return Err(MachineError::BadState {
                state: lifecycle.state,
                request: "start",
            });
        }
        let supported = cpu::supported_cpuid(&self.kvm)?;
        let count = self.settings.cpus;
        let topology = cpu::Topology {
            sockets: self.settings.topology.sockets,
            cores: self.settings.topology.cores,
            threads: self.settings.topology.threads,
        };
        let mut vcpus = Vec::with_capacity(usize::from(count));
        for index in 0..count {
            let cpuid = cpu::vcpu_cpuid(&supported, &self.settings.cpu_model, index, &topology)?;
            vcpus.push(Vcpu::new(
                &self.vm,
                index,
                &cpuid,
                self.pio.clone(),
                self.mmio.clone(),
            )?);
        }
        // A PVM host's KVM keeps some hidden features visible in CPUID: tell the guest kernel
        // not to use them instead.
        let kept = cpu::unhonoured_features(&self.settings.cpu_model, &vcpus[0].effective_cpuid()?);
        if !kept.is_empty() {
            log::info!(
                "KVM keeps hidden CPU features visible ({}): clearing them on the guest command line",
                kept.join(",")
            );
        }
        let cmdline = self.compose_cmdline(cpu::linux_clearcpuid(&kept));
        log::info!("guest command line: {cmdline}");
        *self.boot_cmdline.lock().unwrap_or_else(|e| e.into_inner()) = cmdline.clone();
        let boot = BootConfig {
            kernel: self.settings.kernel.clone(),
            initrd: self.settings.initrd.clone(),
            cmdline,
            cpu_count: count,
        };
        let layout = boot_loader::load_linux(&self.mem, &boot)?;
        log::info!("{:?} kernel loaded, entry {:#x}", layout.kind, layout.entry);
        vcpus[0].set_boot_registers(&self.mem, &boot_registers(&layout))?;

        let exit = self.exit.clone();
        let on_event: cpu::EventCallback = Arc::new(move |index, event| {
            exit.record(match event {
                VcpuEvent::Reset => Ok(VmExit::GuestReset),
                VcpuEvent::Shutdown => Ok(VmExit::GuestShutdown),
                VcpuEvent::Failed(e) => {
                    log::debug!("vcpu{index} failed");
                    Err(e)
                }
            })
        });
        for vcpu in vcpus {
            let handle = match self.sandbox.clone() {
                None => vcpu.spawn(on_event.clone())?,
                Some(sandbox) => vcpu.spawn_with(on_event.clone(), move || {
                    Ok(sandbox.install(ThreadRole::Vcpu)?)
                })?,
            };
            lifecycle.vcpus.push(handle);
        }
        // Every thread of the machine exists now; the vCPUs wait for `resume`.
        if let Some(sandbox) = &self.sandbox {
            sandbox.install(ThreadRole::Main)?;
            log::info!("seccomp: every thread runs under the filter of its role");
        }
        if self.settings.start_paused {
            lifecycle.state = VmState::Paused;
            log::info!("VM created paused (-S)");
        } else {
            for vcpu in &lifecycle.vcpus {
                vcpu.resume()?;
            }
            lifecycle.state = VmState::Running;
        }
        Ok(())
    }

    /// Runs the main event loop until the VM ends; stops the vCPUs before returning.
    pub fn run(&self) -> Result<VmExit> {
        let result = self.event_loop.run();
        self.stop_vcpus();
        self.lock_serial().flush();
        result?;
        let elapsed = self.started.elapsed();
        match self.exit.take() {
            Some(Ok(exit)) => {
                log::info!("VM ended after {:.1} s: {exit:?}", elapsed.as_secs_f64());
                Ok(exit)
            }
            Some(Err(e)) => Err(e.into()),
            None => Ok(VmExit::HostQuit),
        }
    }

    /// Parks every vCPU (QMP `stop`).
    pub fn pause(&self) -> Result<()> {
        let mut lifecycle = self.lock_lifecycle();
        if lifecycle.state != VmState::Running {
            return Err(MachineError::BadState {
                state: lifecycle.state,
                request: "pause",
            });
        }
        for vcpu in &lifecycle.vcpus {
            vcpu.pause()?;
        }
        lifecycle.state = VmState::Paused;
        log::info!("VM paused");
        Ok(())
    }

    /// Runs every vCPU again (QMP `cont`; also the first start after `-S`).
    pub fn resume(&self) -> Result<()> {
        let mut lifecycle = self.lock_lifecycle();
        if lifecycle.state != VmState::Paused {
            return Err(MachineError::BadState {
                state: lifecycle.state,
                request: "resume",
            });
        }
        for vcpu in &lifecycle.vcpus {
            vcpu.resume()?;
        }
        lifecycle.state = VmState::Running;
        lifecycle.io_error = false;
        log::info!("VM resumed");
        Ok(())
    }

    /// Parks every vCPU because a block request failed with an error policy of `stop`, and
    /// marks the pause as an I/O error (QMP `query-status`: `io-error`). Returns whether the
    /// VM was running (and so was paused now).
    pub fn pause_for_io_error(&self) -> Result<bool> {
        let mut lifecycle = self.lock_lifecycle();
        let was_running = lifecycle.state == VmState::Running;
        if was_running {
            for vcpu in &lifecycle.vcpus {
                vcpu.pause()?;
            }
            lifecycle.state = VmState::Paused;
            log::info!("VM paused: a block request failed");
        }
        if lifecycle.state == VmState::Paused {
            lifecycle.io_error = true;
        }
        Ok(was_running)
    }

    /// Whether the VM is paused because of a block I/O error (see
    /// [`MicroVm::pause_for_io_error`]); `cont` ends that.
    pub fn paused_by_io_error(&self) -> bool {
        let lifecycle = self.lock_lifecycle();
        lifecycle.state == VmState::Paused && lifecycle.io_error
    }

    /// Ends the VM at the host's request (QMP `quit`): [`MicroVm::run`] returns
    /// [`VmExit::HostQuit`].
    pub fn shutdown(&self) {
        self.exit.record(Ok(VmExit::HostQuit));
    }

    /// Ends the VM for `reason` (the first reason recorded wins): [`MicroVm::run`] returns it,
    /// and the VMM's one shutdown path follows.
    pub fn request_exit(&self, reason: VmExit) {
        self.exit.record(Ok(reason));
    }

    /// How the vCPUs are arranged (`-smp`).
    pub fn cpu_topology(&self) -> CpuTopology {
        self.settings.topology
    }

    /// The current lifecycle state.
    pub fn state(&self) -> VmState {
        self.lock_lifecycle().state
    }

    /// Number of vCPUs.
    pub fn vcpu_count(&self) -> u8 {
        self.settings.cpus
    }

    /// The kernel ids of the vCPU threads, by index (empty before [`MicroVm::start`]).
    pub fn vcpu_thread_ids(&self) -> Vec<i32> {
        self.lock_lifecycle()
            .vcpus
            .iter()
            .map(VcpuHandle::tid)
            .collect()
    }

    /// Stops every vCPU and joins its thread (the first step of the shutdown path); calling it
    /// again does nothing.
    pub fn stop_vcpus(&self) {
        let mut lifecycle = self.lock_lifecycle();
        for vcpu in lifecycle.vcpus.iter_mut() {
            vcpu.stop();
        }
        for vcpu in lifecycle.vcpus.iter_mut() {
            vcpu.join();
        }
        lifecycle.state = VmState::Shutdown;
    }

    fn lock_lifecycle(&self) -> MutexGuard<'_, Lifecycle> {
        self.lifecycle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_serial(&self) -> MutexGuard<'_, Serial> {
        self.serial.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn boot_registers(layout: &BootLayout) -> BootRegisters {
    BootRegisters {
        entry: layout.entry,
        boot_params: layout.boot_params,
        stack_top: layout.stack_top,
        pml4: layout.pml4,
        gdt: layout.gdt,
        gdt_limit: layout.gdt_limit,
        code_selector: layout.code_selector,
        data_selector: layout.data_selector,
        tss_selector: layout.tss_selector,
        idt: layout.idt,
        idt_limit: boot_loader::IDT_LIMIT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_announce_size_base_and_gsi() {
        let slot = MmioSlot {
            index: 1,
            base: VIRTIO_MMIO_BASE + VIRTIO_MMIO_SIZE,
            size: VIRTIO_MMIO_SIZE,
            gsi: FIRST_VIRTIO_GSI + 1,
        };
        assert_eq!(slot.cmdline_entry(), "virtio_mmio.device=4K@0xd0001000:6");
    }
}
