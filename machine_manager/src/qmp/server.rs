//! The QMP socket on the event loop: [`QmpServer`].
//!
//! ```text
//!   "qmp-listener" (listening socket, IN) ── accept ──► the one client ── greeting
//!   "qmp-client"   (client socket, IN [+ OUT while output is buffered])
//!        read ──► Session (decode, negotiate, dispatch to QmpHandler) ──► output buffer ──► write
//!   "qmp-events"   (eventfd, IN) ── QmpEventSender queue ──► output buffer of the client
//!                   (held until the client's first request is answered, then appended)
//! ```
//!
//! Invariants:
//! - One client at a time. A connection arriving while a client is connected is accepted,
//!   told `{"error":{"class":"GenericError","desc":"QMP socket busy: ..."}}` and closed, after
//!   the current client's pending input was read (so a client that just hung up is noticed
//!   first and its successor is served).
//! - All sockets are non-blocking. A write that would block stays in the client's output
//!   buffer and `OUT` interest is registered until it drains; a client that lets more than
//!   [`MAX_BUFFERED_OUTPUT`] bytes pile up is disconnected.
//! - All state sits behind one mutex taken by the handlers; the [`QmpHandler`] is called with
//!   it held (commands are serialized), except [`QmpHandler::quit`] (and `system_reset`,
//!   `system_powerdown`), called after the reply and the `SHUTDOWN` event were flushed and the
//!   lock released.
//! - Events go to the connected client; until its first request has been answered they are
//!   held for it (up to [`MAX_BUFFERED_OUTPUT`] bytes, beyond which they are dropped with a
//!   warning), so that a QEMU client's negotiation sees the reply to `qmp_capabilities` first.
//!   With no client connected, events are dropped.
//! - The socket file is created by [`QmpServer::new`] (replacing a stale socket, never another
//!   kind of file) with mode 0600, before anyone can connect, and removed when the server is
//!   dropped.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use util::event_loop::{EventLoop, EventLoopError, Handler, HandlerAction};
use vmm_sys_util::epoll::EventSet;

use super::events::{EventQueue, QmpEventSender};
use super::handler::{QmpError, QmpHandler};
use super::message;
use super::session::{AfterReply, Ending, Session};

/// A client that lets this much output pile up unread is disconnected.
const MAX_BUFFERED_OUTPUT: usize = 4 << 20;
/// How long the reply to `quit` may take to reach a client that does not read.
const QUIT_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);
/// Reads per readiness notification, so one chatty client cannot starve the event loop.
const READS_PER_WAKE: usize = 64;

/// Errors setting up the QMP socket.
#[derive(Debug, thiserror::Error)]
pub enum QmpServerError {
    /// The socket path exists but cannot be examined.
    #[error("cannot examine QMP socket path {path}")]
    Inspect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The socket path exists and is not a socket: it is never replaced.
    #[error("QMP socket path {path} exists and is not a socket; refusing to replace it")]
    NotASocket {
        /// The socket path.
        path: PathBuf,
    },
    /// A stale socket file could not be removed.
    #[error("cannot remove the stale QMP socket {path}")]
    RemoveStale {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Binding or listening failed (missing directory, permissions, path too long...).
    #[error("cannot listen on QMP socket {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The socket file's mode cannot be set to 0600 (owner only).
    #[error("cannot restrict QMP socket {path} to its owner (mode 0600)")]
    Restrict {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The listening socket cannot be made non-blocking.
    #[error("cannot make QMP socket {path} non-blocking")]
    NonBlocking {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The event queue's eventfd cannot be created.
    #[error("cannot create the QMP event queue")]
    EventQueue(#[source] std::io::Error),
    /// The listener or the event queue cannot be added to the event loop.
    #[error("cannot register the QMP server with the event loop")]
    Register(#[source] EventLoopError),
}

/// Removes the socket file when dropped.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            if e.kind() != ErrorKind::NotFound {
                log::warn!("qmp: cannot remove socket {}: {e}", self.0.display());
            }
        }
    }
}

/// A QMP server listening on a Unix socket, not yet serving.
pub struct QmpServer {
    listener: UnixListener,
    socket_file: SocketFile,
    handler: Arc<Mutex<dyn QmpHandler>>,
    events: Arc<EventQueue>,
}

impl QmpServer {
    /// Listens on `path` (`-qmp unix:PATH,server,nowait`), replacing a stale socket file.
    /// Clients are served once [`QmpServer::register`] put the server on an event loop.
    pub fn new(path: &Path, handler: Arc<Mutex<dyn QmpHandler>>) -> Result<Self, QmpServerError> {
        remove_stale_socket(path)?;
        let listener = listen_owner_only(path)?;
        let socket_file = SocketFile(path.to_path_buf());
        listener
            .set_nonblocking(true)
            .map_err(|source| QmpServerError::NonBlocking {
                path: path.to_path_buf(),
                source,
            })?;
        let events = EventQueue::new().map_err(QmpServerError::EventQueue)?;
        log::info!("qmp: listening on {}", path.display());
        Ok(QmpServer {
            listener,
            socket_file,
            handler,
            events: Arc::new(events),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.socket_file.0
    }

    /// A sender for events; usable before [`QmpServer::register`] (events sent while no
    /// client is connected are dropped).
    pub fn event_sender(&self) -> QmpEventSender {
        QmpEventSender::new(self.events.clone())
    }

    /// Adds the listener (`qmp-listener`) and the event queue (`qmp-events`) to `event_loop`;
    /// a connected client gets its own `qmp-client` handler. The server lives as long as the
    /// loop keeps these handlers.
    pub fn register(self, event_loop: &Arc<EventLoop>) -> Result<QmpEventSender, QmpServerError> {
        let sender = self.event_sender();
        let listener_fd = self.listener.as_raw_fd();
        let events_fd = self.events.as_raw_fd();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                listener: self.listener,
                _socket_file: self.socket_file,
                client: None,
            }),
            handler: self.handler,
            events: self.events,
            event_loop: Arc::downgrade(event_loop),
        });
        let on_listener = shared.clone();
        event_loop
            .add(
                "qmp-listener",
                listener_fd,
                EventSet::IN,
                Box::new(move |_| {
                    on_listener.on_listener_ready();
                    HandlerAction::Keep
                }),
            )
            .map_err(QmpServerError::Register)?;
        let on_events = shared;
        let added = event_loop.add(
            "qmp-events",
            events_fd,
            EventSet::IN,
            Box::new(move |_| {
                on_events.on_events_ready();
                HandlerAction::Keep
            }),
        );
        if let Err(e) = added {
            if let Err(undo) = event_loop.remove(listener_fd) {
                log::warn!("qmp: cannot unregister the listener: {undo}");
            }
            return Err(QmpServerError::Register(e));
        }
        Ok(sender)
    }
}

/// Binds a Unix stream socket at `path`, gives the socket file mode 0600 (only the owner may
/// connect), then listens. Nobody can connect in between: a socket that is bound but not
/// listening refuses connections. On failure after the bind the file is removed.
fn listen_owner_only(path: &Path) -> Result<UnixListener, QmpServerError> {
    let bind_error = |source| QmpServerError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let mut addr = libc::sockaddr_un {
        sun_family: libc::AF_UNIX as libc::sa_family_t,
        sun_path: [0; 108],
    };
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(bind_error(std::io::Error::new(
            ErrorKind::InvalidInput,
            format!(
                "a socket path must be shorter than {} bytes, without NUL",
                addr.sun_path.len()
            ),
        )));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(bind_error(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a socket just created and owned by nobody else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid, NUL-terminated sockaddr_un and the length passed is its size.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(bind_error(std::io::Error::last_os_error()));
    }
    let bound = SocketFile(path.to_path_buf());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        QmpServerError::Restrict {
            path: path.to_path_buf(),
            source,
        }
    })?;
    // SAFETY: listen(2) on the socket owned above; the result is checked.
    if unsafe { libc::listen(socket.as_raw_fd(), 16) } < 0 {
        return Err(bind_error(std::io::Error::last_os_error()));
    }
    // The caller owns the socket file from here on.
    std::mem::forget(bound);
    Ok(UnixListener::from(socket))
}

/// Removes `path` if it is a socket left by an earlier run; refuses any other kind of file.
fn remove_stale_socket(path: &Path) -> Result<(), QmpServerError> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(QmpServerError::Inspect {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !metadata.file_type().is_socket() {
        return Err(QmpServerError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    log::info!("qmp: removing stale socket {}", path.display());
    std::fs::remove_file(path).map_err(|source| QmpServerError::RemoveStale {
        path: path.to_path_buf(),
        source,
    })
}

/// What the event-loop handlers share.
struct Shared {
    state: Mutex<State>,
    handler: Arc<Mutex<dyn QmpHandler>>,
    events: Arc<EventQueue>,
    event_loop: Weak<EventLoop>,
}

struct State {
    listener: UnixListener,
    _socket_file: SocketFile,
    client: Option<Client>,
}

/// The connected client.
struct Client {
    stream: UnixStream,
    session: Session,
    output: Vec<u8>,
    /// Event lines raised before its first request was answered.
    held: Vec<u8>,
    /// The events its `qmp-client` handler is registered for, if registered.
    registered: Option<EventSet>,
}

/// How a client fared after it was serviced.
enum ClientStatus {
    /// Still connected.
    Alive,
    /// Hung up or failed; holds why.
    Gone(String),
    /// It asked to end the VM: its output is flushed, the handler's `quit` (or
    /// `system_reset`, `system_powerdown`) is due.
    End(Ending),
}

impl Client {
    fn new(stream: UnixStream) -> Self {
        Client {
            stream,
            session: Session::default(),
            output: message::greeting(),
            held: Vec::new(),
            registered: None,
        }
    }

    /// Reads and answers what the client sent, then writes what the socket accepts.
    fn service(&mut self, handler: &Mutex<dyn QmpHandler>) -> ClientStatus {
        let mut buf = [0u8; 4096];
        for _ in 0..READS_PER_WAKE {
            match self.stream.read(&mut buf) {
                Ok(0) => return ClientStatus::Gone("client disconnected".into()),
                Ok(n) => {
                    self.session.push_input(&buf[..n]);
                    let after = self.session.process(handler, &mut self.output);
                    if self.session.ready_for_events() && !self.held.is_empty() {
                        self.output.append(&mut self.held);
                    }
                    if let AfterReply::End(ending) = after {
                        self.flush_blocking();
                        return ClientStatus::End(ending);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return ClientStatus::Gone(format!("read failed: {e}")),
            }
        }
        self.flush()
    }

    /// Writes buffered output until the socket would block.
    fn flush(&mut self) -> ClientStatus {
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(0) => return ClientStatus::Gone("client stopped reading".into()),
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return ClientStatus::Gone(format!("write failed: {e}")),
            }
        }
        if self.output.len() > MAX_BUFFERED_OUTPUT {
            return ClientStatus::Gone(format!(
                "client left more than {MAX_BUFFERED_OUTPUT} bytes unread"
            ));
        }
        ClientStatus::Alive
    }

    /// Takes event lines: sent at once once the first request was answered, held until then.
    fn push_events(&mut self, lines: Vec<u8>) {
        if self.session.ready_for_events() {
            self.output.extend(lines);
        } else if self.held.len() + lines.len() <= MAX_BUFFERED_OUTPUT {
            self.held.extend(lines);
        } else {
            log::warn!(
                "qmp: client has sent no request yet and holds too many events; dropping some"
            );
        }
    }

    /// Writes all buffered output, waiting up to [`QUIT_FLUSH_TIMEOUT`] for a slow reader;
    /// the socket is non-blocking again afterwards, whatever happened.
    fn flush_blocking(&mut self) {
        let written = self
            .stream
            .set_write_timeout(Some(QUIT_FLUSH_TIMEOUT))
            .and_then(|()| self.stream.set_nonblocking(false))
            .and_then(|()| self.stream.write_all(&self.output));
        if let Err(e) = written {
            log::warn!("qmp: cannot deliver the reply to quit: {e}");
        }
        if let Err(e) = self.stream.set_nonblocking(true) {
            log::warn!("qmp: cannot make the client socket non-blocking again: {e}");
        }
        self.output.clear();
    }

    /// The events its handler must watch: input always, output while some is buffered.
    fn wanted_events(&self) -> EventSet {
        if self.output.is_empty() {
            EventSet::IN
        } else {
            EventSet::IN | EventSet::OUT
        }
    }
}

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn on_listener_ready(self: &Arc<Self>) {
        let mut ending = None;
        {
            let mut state = self.lock_state();
            loop {
                match state.listener.accept() {
                    Ok((stream, _)) => ending = ending.or(self.on_connect(&mut state, stream)),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::warn!("qmp: accept failed: {e}");
                        break;
                    }
                }
            }
        }
        if let Some(ending) = ending {
            self.end(ending);
        }
    }

    /// Serves `stream` if no client is connected, refuses it otherwise. Returns how the
    /// current client's pending input asked the VM to end, if it did.
    fn on_connect(self: &Arc<Self>, state: &mut State, stream: UnixStream) -> Option<Ending> {
        let mut ending = None;
        if let Some(client) = state.client.as_mut() {
            // The current client may have hung up without the loop noticing yet.
            let status = client.service(&self.handler);
            ending = self.apply_status(state, status);
        }
        if state.client.is_some() {
            refuse(stream);
            return ending;
        }
        if let Err(e) = stream.set_nonblocking(true) {
            log::warn!("qmp: cannot make the client socket non-blocking: {e}");
            return ending;
        }
        log::info!("qmp: client connected");
        let mut client = Client::new(stream);
        let status = client.flush();
        state.client = Some(client);
        ending.or(self.apply_status(state, status))
    }

    fn on_client_ready(self: &Arc<Self>) {
        let ending = {
            let mut state = self.lock_state();
            match state.client.as_mut() {
                Some(client) => {
                    let status = client.service(&self.handler);
                    self.apply_status(&mut state, status)
                }
                // A stale notification for a client already dropped.
                None => None,
            }
        };
        if let Some(ending) = ending {
            self.end(ending);
        }
    }

    fn on_events_ready(self: &Arc<Self>) {
        let events = self.events.take_all();
        let mut state = self.lock_state();
        let Some(client) = state.client.as_mut() else {
            if !events.is_empty() {
                log::debug!("qmp: no client, dropping {} event(s)", events.len());
            }
            return;
        };
        let mut lines = Vec::new();
        for (event, timestamp) in &events {
            lines.extend(message::event(event, *timestamp));
        }
        client.push_events(lines);
        let status = client.flush();
        // Events never end the VM.
        self.apply_status(&mut state, status);
    }

    /// Drops a gone client or updates its registration; returns how the VM is to end, if a
    /// request asked for it.
    fn apply_status(self: &Arc<Self>, state: &mut State, status: ClientStatus) -> Option<Ending> {
        match status {
            ClientStatus::Gone(reason) => {
                log::info!("qmp: dropping client: {reason}");
                self.drop_client(state);
                None
            }
            ClientStatus::Alive => {
                self.sync_registration(state);
                None
            }
            ClientStatus::End(ending) => {
                self.sync_registration(state);
                Some(ending)
            }
        }
    }

    /// Registers the client's handler for the events it needs now, if that changed.
    fn sync_registration(self: &Arc<Self>, state: &mut State) {
        let Some(client) = state.client.as_mut() else {
            return;
        };
        let wanted = client.wanted_events();
        if client.registered == Some(wanted) {
            return;
        }
        let Some(event_loop) = self.event_loop.upgrade() else {
            return;
        };
        let fd = client.stream.as_raw_fd();
        let result = match client.registered.take() {
            Some(_) => event_loop.remove(fd),
            None => Ok(()),
        }
        .and_then(|()| event_loop.add("qmp-client", fd, wanted, self.client_handler()));
        match result {
            Ok(()) => client.registered = Some(wanted),
            Err(e) => {
                log::error!("qmp: cannot watch the client socket: {e}");
                self.drop_client(state);
            }
        }
    }

    fn client_handler(self: &Arc<Self>) -> Handler {
        let shared = self.clone();
        Box::new(move |_| {
            shared.on_client_ready();
            HandlerAction::Keep
        })
    }

    fn drop_client(&self, state: &mut State) {
        let Some(client) = state.client.take() else {
            return;
        };
        if client.registered.is_some() {
            if let Some(event_loop) = self.event_loop.upgrade() {
                if let Err(e) = event_loop.remove(client.stream.as_raw_fd()) {
                    log::warn!("qmp: cannot unregister the client socket: {e}");
                }
            }
        }
    }

    fn end(&self, ending: Ending) {
        log::info!("qmp: {ending:?} requested");
        let mut handler = self.handler.lock().unwrap_or_else(|e| e.into_inner());
        match ending {
            Ending::Quit => handler.quit(),
            Ending::Reset => handler.system_reset(),
            Ending::Powerdown => handler.system_powerdown(),
        }
    }
}

/// Tells a second concurrent client that the socket is taken, then closes it.
fn refuse(mut stream: UnixStream) {
    log::warn!("qmp: refusing a second client: one client at a time");
    let busy = QmpError::Generic(
        "QMP socket busy: another client is connected (one client at a time)".into(),
    );
    // Best effort into an empty socket buffer; the connection closes either way.
    if let Err(e) = stream
        .set_nonblocking(true)
        .and_then(|()| stream.write_all(&message::error(&busy, None)))
    {
        log::debug!("qmp: cannot tell the refused client why: {e}");
    }
}
