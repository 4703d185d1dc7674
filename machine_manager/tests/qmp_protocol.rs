//! The QMP protocol over a real Unix socket and a real event-loop thread, against an in-test
//! machine (`qmp_common::TestVm`).

mod qmp_common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use machine_manager::qmp::{QmpEvent, QmpHandler, QmpServer, QmpServerError, ShutdownReason};
use qmp_common::{error_class, error_desc, socket_path, Client, Harness, TestVm};
use serde_json::json;
use util::event_loop::HandlerAction;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[test]
fn greeting_is_exact_and_ends_with_crlf() {
    let harness = Harness::start("greeting");
    let mut client = Client::connect(&harness.path);
    let line = client.recv_line();
    assert_eq!(
        line,
        format!(
            "{{\"QMP\":{{\"version\":{{\"qemu\":{{\"micro\":1,\"minor\":0,\"major\":5}},\
             \"package\":\"StratoVirt-{}\"}},\"capabilities\":[]}}}}",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn commands_work_straight_after_the_greeting_as_in_stratovirt() {
    let harness = Harness::start("no-negotiation");
    let mut client = harness.connect();
    // StratoVirt's documented session: greeting, then commands, no qmp_capabilities.
    let event = client.execute(r#"{"execute":"stop"}"#);
    assert_eq!(event["event"], "STOP");
    assert_eq!(client.recv(), json!({"return": {}}));
    assert_eq!(
        client.execute(r#"{"execute":"query-status"}"#),
        json!({"return": {"running": false, "singlestep": false, "status": "paused"}})
    );
    let event = client.execute(r#"{"execute":"cont"}"#);
    assert_eq!(event["event"], "RESUME");
    assert_eq!(client.recv(), json!({"return": {}}));
    assert_eq!(
        client.execute(r#"{"execute":"query-status"}"#),
        json!({"return": {"running": true, "singlestep": false, "status": "running"}})
    );
    // qmp_capabilities is optional and answers {} whenever it is sent.
    let reply = client.execute(r#"{"execute":"qmp_capabilities","arguments":{},"id":"neg"}"#);
    assert_eq!(reply, json!({"return": {}, "id": "neg"}));
    assert_eq!(
        client.execute(r#"{"execute":"qmp_capabilities"}"#),
        json!({"return": {}})
    );
    let reply = client.execute(r#"{"execute":"no-such-command","id":1}"#);
    assert_eq!(error_class(&reply), "CommandNotFound", "{reply}");
    assert_eq!(harness.vm().calls, ["stop", "cont"]);
}

#[test]
fn system_reset_ends_the_vm_after_its_reply_and_shutdown_event() {
    let harness = Harness::start("system-reset");
    let mut client = harness.connect();
    assert_eq!(
        client.execute(r#"{"execute":"system_reset","id":4}"#),
        json!({"return": {}, "id": 4})
    );
    let event = client.recv();
    assert_eq!(event["event"], "SHUTDOWN");
    assert_eq!(
        event["data"],
        json!({"guest": false, "reason": "host-qmp-system-reset"})
    );
    // The default system_reset of a handler is its quit.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while harness.vm().quit_calls == 0 {
        assert!(std::time::Instant::now() < deadline, "quit never called");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(harness.vm().calls, ["quit"]);
}

#[test]
fn any_id_is_echoed_on_success_and_on_error() {
    let harness = Harness::start("id");
    let mut client = harness.negotiated();
    for id in [
        json!("abc"),
        json!(17),
        json!(-2.5),
        json!(null),
        json!(true),
        json!([1, "two", {"three": 3}]),
        json!({"nested": {"k": [null]}}),
    ] {
        let request = json!({"execute": "query-status", "id": id}).to_string();
        let reply = client.execute(&request);
        assert_eq!(reply["id"], id, "{reply}");
        assert!(reply.get("return").is_some());
        let request = json!({"execute": "nope", "id": id}).to_string();
        let reply = client.execute(&request);
        assert_eq!(reply["id"], id, "{reply}");
        assert_eq!(error_class(&reply), "CommandNotFound");
    }
    let reply = client.execute(r#"{"execute":"query-status"}"#);
    assert!(reply.get("id").is_none(), "{reply}");
}

#[test]
fn each_error_class_reaches_the_client() {
    let harness = Harness::start("classes");
    let mut client = harness.negotiated();
    let reply = client.execute(r#"{"execute":"query-balloon","id":1}"#);
    assert_eq!(
        reply,
        json!({"error": {"class": "CommandNotFound",
                         "desc": "The command query-balloon has not been found"}, "id": 1})
    );
    let reply = client.execute(r#"{"execute":"device_del","arguments":{"id":"ghost"},"id":2}"#);
    assert_eq!(error_class(&reply), "DeviceNotFound");
    assert_eq!(error_desc(&reply), "no device ghost");
    let reply = client.execute(r#"{"execute":"cont","id":3}"#);
    assert_eq!(error_class(&reply), "GenericError");
    assert_eq!(error_desc(&reply), "the VM is already running");
}

#[test]
fn unknown_and_missing_argument_members_are_named_in_the_error() {
    let harness = Harness::start("arguments");
    let mut client = harness.negotiated();
    let cases = [
        (
            json!({"node-name": "d", "file": {"driver": "file", "filename": "/x"}, "size": 1}),
            "size",
        ),
        (
            json!({"node-name": "d", "file": {"driver": "file", "filename": "/x", "aio-max-batch": 4}}),
            "aio-max-batch",
        ),
        (
            json!({"node-name": "d", "file": {"driver": "file"}}),
            "filename",
        ),
        (
            json!({"file": {"driver": "file", "filename": "/x"}}),
            "node-name",
        ),
        (
            json!({"node-name": "d", "file": {"driver": "file", "filename": "/x"}, "cache": {"direct": true, "no-flush": true}}),
            "no-flush",
        ),
    ];
    for (arguments, member) in cases {
        let request = json!({"execute": "blockdev-add", "arguments": arguments, "id": member});
        let reply = client.execute(&request.to_string());
        assert_eq!(error_class(&reply), "GenericError", "{reply}");
        assert!(error_desc(&reply).contains(member), "{reply}");
        assert_eq!(reply["id"], member);
    }
    let reply = client
        .execute(r#"{"execute":"device_add","arguments":{"id":"d","driver":"virtio-blk-mmio"}}"#);
    assert!(error_desc(&reply).contains("addr"), "{reply}");
    let reply = client.execute(r#"{"execute":"stop","arguments":{"force":true}}"#);
    assert!(error_desc(&reply).contains("force"), "{reply}");
    let reply = client.execute(r#"{"execute":"stop","argumentz":{}}"#);
    assert!(error_desc(&reply).contains("argumentz"), "{reply}");
    // None of these reached the machine.
    assert!(harness.vm().calls.is_empty(), "{:?}", harness.vm().calls);
}

#[test]
fn a_request_sent_byte_by_byte_is_answered_once() {
    let harness = Harness::start("split");
    let mut client = harness.negotiated();
    let request = br#"{ "execute" : "query-status", "id" : {"split": [1, 2]} }"#;
    for byte in request {
        client.send(&[*byte]);
        std::thread::sleep(Duration::from_millis(2));
    }
    let reply = client.recv();
    assert_eq!(reply["id"], json!({"split": [1, 2]}));
    assert_eq!(reply["return"]["status"], "running");
    client.expect_silence(Duration::from_millis(200));
}

#[test]
fn several_requests_in_one_write_are_answered_in_order() {
    let harness = Harness::start("batch");
    let mut client = harness.negotiated();
    client.send(
        b"{\"execute\":\"stop\",\"id\":1}{\"execute\":\"query-status\",\"id\":2}\r\n\
          {\"execute\":\"cont\",\"id\":3}\n{\"execute\":\"query-status\",\"id\":4}",
    );
    assert_eq!(client.recv()["event"], "STOP");
    assert_eq!(client.recv(), json!({"return": {}, "id": 1}));
    assert_eq!(client.recv()["return"]["status"], "paused");
    assert_eq!(client.recv()["event"], "RESUME");
    assert_eq!(client.recv(), json!({"return": {}, "id": 3}));
    assert_eq!(client.recv()["return"]["status"], "running");
    assert_eq!(harness.vm().calls, vec!["stop", "cont"]);
}

#[test]
fn malformed_json_gets_an_error_and_the_connection_stays_usable() {
    let harness = Harness::start("malformed");
    let mut client = harness.negotiated();
    let reply = client.execute("{\"execute\": query-status}\r\n");
    assert_eq!(error_class(&reply), "GenericError");
    assert!(
        error_desc(&reply).starts_with("JSON parse error"),
        "{reply}"
    );
    assert!(reply.get("id").is_none());
    // A bad line followed by a good one in the same write.
    client.send(b"{\"execute\":\"stop\",,}\n{\"execute\":\"query-status\",\"id\":\"ok\"}\n");
    assert_eq!(error_class(&client.recv()), "GenericError");
    let reply = client.recv();
    assert_eq!(reply["id"], "ok");
    assert_eq!(reply["return"]["status"], "running");
    // Valid JSON that is not a request object.
    let reply = client.execute("[\"execute\", \"stop\"]\n");
    assert_eq!(error_desc(&reply), "QMP input must be a JSON object");
    let reply = client.execute(r#"{"execute":"query-status","id":5}"#);
    assert_eq!(reply["id"], 5);
    assert!(harness.vm().calls.is_empty());
}

#[test]
fn a_client_that_hangs_up_mid_request_is_dropped_and_the_next_one_is_served() {
    let harness = Harness::start("hangup");
    {
        let mut client = harness.negotiated();
        client.send(br#"{"execute":"stop","arg"#);
    }
    // Connect at once: the server must notice the hang-up rather than refuse us as busy.
    let mut client = harness.connect();
    let reply = client.execute(r#"{"execute":"qmp_capabilities"}"#);
    assert_eq!(reply, json!({"return": {}}));
    let reply = client.execute(r#"{"execute":"query-status"}"#);
    assert_eq!(reply["return"]["status"], "running");
    assert!(harness.vm().calls.is_empty(), "the partial stop ran");
    // Clients one after another, each starting afresh.
    drop(client);
    for round in 0..3 {
        let mut client = harness.connect();
        let reply = client.execute(r#"{"execute":"query-status"}"#);
        assert_eq!(reply["return"]["status"], "running", "round {round}");
    }
}

#[test]
fn a_hang_up_noticed_only_when_the_next_client_arrives_does_not_make_it_busy() {
    let harness = Harness::start("hangup-race");
    let mut first = harness.negotiated();
    // Hold the loop inside a handler so that the next connection and the hang-up are seen
    // in one batch, the connection first.
    let stall = EventFd::new(EFD_NONBLOCK).unwrap();
    let stall_reader = stall.try_clone().unwrap();
    let (stalled_tx, stalled_rx) = std::sync::mpsc::channel::<()>();
    let (resume_tx, resume_rx) = std::sync::mpsc::channel::<()>();
    harness
        .event_loop
        .add(
            "test-stall",
            stall.as_raw_fd(),
            EventSet::IN,
            Box::new(move |_| {
                let _ = stall_reader.read();
                let _ = stalled_tx.send(());
                let _ = resume_rx.recv_timeout(Duration::from_secs(10));
                HandlerAction::Keep
            }),
        )
        .unwrap();
    stall.write(1).unwrap();
    stalled_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("loop stalled");
    let mut second = Client::connect(&harness.path);
    first.send(br#"{"execute":"stop","argu"#);
    drop(first);
    resume_tx.send(()).unwrap();
    let greeting = second.recv();
    assert!(greeting.get("QMP").is_some(), "refused: {greeting}");
    assert_eq!(
        second.execute(r#"{"execute":"qmp_capabilities"}"#),
        json!({"return": {}})
    );
    assert!(harness.vm().calls.is_empty());
}

#[test]
fn a_second_concurrent_client_is_refused_politely() {
    let harness = Harness::start("busy");
    let mut first = harness.negotiated();
    let mut second = Client::connect(&harness.path);
    let rest = second.expect_closed();
    let text = String::from_utf8(rest).unwrap();
    let line = text.strip_suffix("\r\n").expect("terminated line");
    let reply: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(error_class(&reply), "GenericError");
    assert!(error_desc(&reply).contains("busy"), "{reply}");
    // The first client is unaffected.
    let reply = first.execute(r#"{"execute":"query-status"}"#);
    assert_eq!(reply["return"]["status"], "running");
}

#[test]
fn events_wait_for_the_first_reply_so_that_negotiation_reads_its_own_reply() {
    // A QEMU client (qemu.qmp) negotiates: after the greeting it sends qmp_capabilities and
    // takes the next message as the reply. An event raised in between must come after it.
    let harness = Harness::start("held-events");
    let mut client = harness.connect();
    harness.events.send(QmpEvent::Stop);
    client.expect_silence(Duration::from_millis(200));
    assert_eq!(
        client.execute(r#"{"execute":"qmp_capabilities"}"#),
        json!({"return": {}})
    );
    assert_eq!(client.recv()["event"], "STOP", "held, then delivered");
    // A StratoVirt-style client that never negotiates gets them after its first reply too.
    drop(client);
    let mut client = harness.connect();
    harness.events.send(QmpEvent::Resume);
    client.expect_silence(Duration::from_millis(200));
    let reply = client.execute(r#"{"execute":"query-status","id":1}"#);
    assert_eq!(reply["id"], 1, "{reply}");
    assert_eq!(client.recv()["event"], "RESUME");
    harness.events.send(QmpEvent::Powerdown);
    assert_eq!(client.recv()["event"], "POWERDOWN");
}

#[test]
fn events_from_another_thread_reach_the_client_with_timestamps() {
    let harness = Harness::start("events");
    let mut client = harness.connect();
    assert_eq!(
        client.execute(r#"{"execute":"query-status"}"#)["return"]["status"],
        "running"
    );
    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let sender = harness.events.clone();
    std::thread::spawn(move || {
        sender.send(QmpEvent::Shutdown(ShutdownReason::GuestShutdown));
        sender.send(QmpEvent::DeviceDeleted {
            id: "drive-9".into(),
        });
    })
    .join()
    .unwrap();
    let event = client.recv();
    assert_eq!(event["event"], "SHUTDOWN");
    assert_eq!(
        event["data"],
        json!({"guest": true, "reason": "guest-shutdown"})
    );
    let seconds = event["timestamp"]["seconds"].as_u64().unwrap();
    let micros = event["timestamp"]["microseconds"].as_u64().unwrap();
    assert!(micros < 1_000_000);
    let stamped = Duration::from_secs(seconds) + Duration::from_micros(micros);
    assert!(
        stamped + Duration::from_millis(1) >= before,
        "{stamped:?} < {before:?}"
    );
    assert!(stamped < before + Duration::from_secs(5));
    let event = client.recv();
    assert_eq!(event["event"], "DEVICE_DELETED");
    assert_eq!(
        event["data"],
        json!({"device": "drive-9", "path": "drive-9"})
    );
    let keys: Vec<_> = event.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys.len(), 3, "{event}");
}

#[test]
fn stop_and_cont_emit_events_and_refuse_repeats() {
    let harness = Harness::start("stopcont");
    let mut client = harness.negotiated();
    let event = client.execute(r#"{"execute":"stop","id":1}"#);
    assert_eq!(event["event"], "STOP");
    assert_eq!(event["data"], json!({}));
    assert!(event["timestamp"]["seconds"].is_u64());
    assert_eq!(client.recv(), json!({"return": {}, "id": 1}));
    let reply = client.execute(r#"{"execute":"stop","id":2}"#);
    assert_eq!(error_class(&reply), "GenericError");
    assert_eq!(reply["id"], 2);
    let reply = client.execute(r#"{"execute":"query-status"}"#);
    assert_eq!(
        reply["return"],
        json!({"running": false, "singlestep": false, "status": "paused"})
    );
    assert_eq!(client.execute(r#"{"execute":"cont"}"#)["event"], "RESUME");
    assert_eq!(client.recv(), json!({"return": {}}));
    let reply = client.execute(r#"{"execute":"cont"}"#);
    assert_eq!(error_class(&reply), "GenericError");
    client.expect_silence(Duration::from_millis(100));
}

#[test]
fn query_cpus_has_qemu_shape() {
    let vm = TestVm {
        cpus: 3,
        ..TestVm::default()
    };
    let harness = Harness::with_vm("cpus", vm);
    let mut client = harness.negotiated();
    let reply = client.execute(r#"{"execute":"query-cpus"}"#);
    assert_eq!(
        reply["return"],
        json!([
            {"CPU": 0, "current": true, "halted": false, "qom_path": "/machine/unattached/device[0]", "thread_id": 1000},
            {"CPU": 1, "current": false, "halted": true, "qom_path": "/machine/unattached/device[1]", "thread_id": 1001},
            {"CPU": 2, "current": false, "halted": false, "qom_path": "/machine/unattached/device[2]", "thread_id": 1002}
        ])
    );
}

#[test]
fn hot_plug_sequence_reaches_the_machine_with_typed_arguments() {
    let harness = Harness::start("hotplug");
    let mut client = harness.negotiated();
    let reply = client.execute(
        r#"{"execute":"blockdev-add","arguments":{"node-name":"drive-1","file":{"driver":"file","filename":"/path/disk.img","aio":"iouring"},"cache":{"direct":true},"read-only":false},"id":"b"}"#,
    );
    assert_eq!(reply, json!({"return": {}, "id": "b"}));
    {
        let vm = harness.vm();
        let node = &vm.blockdevs["drive-1"];
        assert_eq!(node.filename, std::path::PathBuf::from("/path/disk.img"));
        assert_eq!(node.aio, Some(util::aio::AioEngine::IoUring));
        assert_eq!(node.direct, Some(true));
        assert!(!node.read_only);
    }
    let reply = client.execute(
        r#"{"execute":"device_add","arguments":{"id":"drive-1","driver":"virtio-blk-mmio","addr":"0x1"}}"#,
    );
    assert_eq!(reply, json!({"return": {}}));
    assert_eq!(
        harness.vm().slots[1],
        Some(("drive-1".to_string(), "drive-1".to_string()))
    );
    let reply = client.execute(
        r#"{"execute":"device_add","arguments":{"id":"x","driver":"virtio-blk-mmio","addr":"7","drive":"drive-1"}}"#,
    );
    assert!(error_desc(&reply).contains("slot 7"), "{reply}");
    let reply = client.execute(r#"{"execute":"blockdev-del","arguments":{"node-name":"drive-1"}}"#);
    assert!(error_desc(&reply).contains("in use"), "{reply}");
    let event = client.execute(r#"{"execute":"device_del","arguments":{"id":"drive-1"},"id":3}"#);
    assert_eq!(event["event"], "DEVICE_DELETED");
    assert_eq!(
        event["data"],
        json!({"device": "drive-1", "path": "drive-1"})
    );
    assert_eq!(client.recv(), json!({"return": {}, "id": 3}));
    let reply = client.execute(r#"{"execute":"blockdev-del","arguments":{"node-name":"drive-1"}}"#);
    assert_eq!(reply, json!({"return": {}}));
    // The machine's rule, reported as the machine words it.
    let reply = client.execute(
        r#"{"execute":"blockdev-add","arguments":{"node-name":"n","file":{"driver":"file","filename":"/f","aio":"native"},"cache":{"direct":false}}}"#,
    );
    assert_eq!(error_class(&reply), "GenericError");
    assert!(error_desc(&reply).contains("direct"), "{reply}");
    let reply = client.execute(
        r#"{"execute":"blockdev-add","arguments":{"node-name":"n","file":{"driver":"file","filename":"/f","aio":"threads2"}}}"#,
    );
    assert!(error_desc(&reply).contains("threads2"), "{reply}");
}

#[test]
fn quit_replies_emits_shutdown_then_calls_the_machine() {
    let harness = Harness::start("quit");
    let mut client = harness.negotiated();
    let reply = client.execute(r#"{"execute":"quit","id":"q"}"#);
    assert_eq!(reply, json!({"return": {}, "id": "q"}));
    let event = client.recv();
    assert_eq!(event["event"], "SHUTDOWN");
    assert_eq!(
        event["data"],
        json!({"guest": false, "reason": "host-qmp-quit"})
    );
    // quit() runs right after the flush, on the loop thread.
    for _ in 0..100 {
        if harness.vm().quit_calls == 1 {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("quit() was not called: {:?}", harness.vm().calls);
}

#[test]
fn output_that_would_block_is_buffered_until_the_client_reads() {
    // ~100 CPUs make each query-cpus reply ~9 KiB; 300 of them exceed the socket buffer.
    let vm = TestVm {
        cpus: 100,
        ..TestVm::default()
    };
    let harness = Harness::with_vm("backpressure", vm);
    let mut client = harness.negotiated();
    let requests: String = (0..300)
        .map(|i| format!("{{\"execute\":\"query-cpus\",\"id\":{i}}}\n"))
        .collect();
    client.send(requests.as_bytes());
    // Let the server fill the socket and buffer the rest.
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..300 {
        let reply = client.recv();
        assert_eq!(reply["id"], i);
        assert_eq!(reply["return"].as_array().unwrap().len(), 100);
    }
    // Still responsive afterwards.
    assert_eq!(
        client.execute(r#"{"execute":"query-status"}"#)["return"]["status"],
        "running"
    );
}

#[test]
fn a_client_that_never_reads_is_disconnected_and_the_socket_serves_the_next() {
    let vm = TestVm {
        cpus: 100,
        ..TestVm::default()
    };
    let harness = Harness::with_vm("nonreader", vm);
    let mut client = harness.negotiated();
    // 1000 replies of ~9 KiB: far more than the 4 MiB the server keeps for a client.
    let requests: String = (0..1000)
        .map(|i| format!("{{\"execute\":\"query-cpus\",\"id\":{i}}}\n"))
        .collect();
    client.send(requests.as_bytes());
    // Without reading: the socket frees up only once the server dropped this client (until
    // then a newcomer is refused as busy).
    let mut next = None;
    for _ in 0..200 {
        let mut probe = Client::connect(&harness.path);
        let first = probe.recv();
        if first.get("QMP").is_some() {
            next = Some(probe);
            break;
        }
        assert!(error_desc(&first).contains("busy"), "{first}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut next = next.expect("the non-reading client was never dropped");
    let received = client.expect_closed();
    let replies = received.windows(2).filter(|w| w == b"\r\n").count();
    assert!(replies < 1000, "all {replies} replies arrived");
    assert_eq!(
        next.execute(r#"{"execute":"qmp_capabilities"}"#),
        json!({"return": {}})
    );
    assert_eq!(
        next.execute(r#"{"execute":"query-status"}"#)["return"]["status"],
        "running"
    );
}

#[test]
fn stale_socket_is_replaced_but_other_files_are_refused() {
    let handler = || -> Arc<Mutex<dyn QmpHandler>> { Arc::new(Mutex::new(TestVm::default())) };
    let path = socket_path("stale");
    let stale = UnixListener::bind(&path).unwrap();
    drop(stale); // leaves the socket file behind
    assert!(path.exists());
    let server = QmpServer::new(&path, handler()).expect("stale socket replaced");
    assert_eq!(server.path(), path.as_path());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o600, "socket mode {mode:o}");
    drop(server);
    assert!(!path.exists(), "socket file removed on drop");

    let file = socket_path("regular");
    std::fs::write(&file, b"keep me").unwrap();
    let err = QmpServer::new(&file, handler()).err().expect("refused");
    assert!(matches!(err, QmpServerError::NotASocket { .. }), "{err}");
    assert!(err.to_string().contains(file.to_str().unwrap()));
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    std::fs::remove_file(&file).unwrap();

    let missing_dir = std::env::temp_dir().join("qmp-no-such-dir/qmp.sock");
    let err = QmpServer::new(&missing_dir, handler())
        .err()
        .expect("refused");
    assert!(matches!(err, QmpServerError::Bind { .. }), "{err}");
}
