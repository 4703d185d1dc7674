//! The Rust io_uring ABI against the system's `<linux/io_uring.h>`.
//!
//! The test generates a C program from the names the Rust side defines (struct fields,
//! constants, opcodes), compiles it with gcc against the installed header, runs it, and
//! compares every `name value` line it prints with the Rust value. No expected number is
//! written here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::mem::{align_of, offset_of, size_of, MaybeUninit};
use std::path::{Path, PathBuf};
use std::process::Command;

use util::io_uring::sys::{
    io_cqring_offsets, io_sqring_offsets, io_uring_cqe, io_uring_params, io_uring_probe,
    io_uring_probe_op, io_uring_restriction, io_uring_sqe, IoringOp, ABI_CONSTANTS, IORING_OP_LAST,
};

const HEADER: &str = "/usr/include/linux/io_uring.h";

/// One struct member: its C designator, Rust offset and Rust size (`None` for flexible arrays,
/// whose C `sizeof` is not defined). `newer` members come from a newer kernel UAPI than the
/// installed header and cannot be compared with it.
struct Field {
    c_name: &'static str,
    offset: usize,
    size: Option<usize>,
    newer: bool,
}

/// One struct: C name, Rust size and alignment, members.
struct Layout {
    c_name: &'static str,
    size: usize,
    align: usize,
    fields: Vec<Field>,
}

fn size_of_pointee<T>(_: *const T) -> usize {
    size_of::<T>()
}

/// `field!(Type, c_name => rust.path)`; append `, flex` for a flexible array member and
/// `, newer` for a member the installed header predates.
macro_rules! field {
    ($t:ty, $c:ident => $($path:ident).+) => {
        field!(@make $t, $c, Some, false, $($path).+)
    };
    ($t:ty, $c:ident => $($path:ident).+, flex) => {
        field!(@make $t, $c, (|_| None), false, $($path).+)
    };
    ($t:ty, $c:ident => $($path:ident).+, newer) => {
        field!(@make $t, $c, Some, true, $($path).+)
    };
    (@make $t:ty, $c:ident, $wrap:expr, $newer:expr, $($path:ident).+) => {{
        let value = MaybeUninit::<$t>::uninit();
        let base = value.as_ptr();
        // SAFETY: `addr_of!` computes the address of a member of the live (uninitialised)
        // `value` without reading it or creating a reference.
        let member = unsafe { std::ptr::addr_of!((*base).$($path).+) };
        Field { c_name: stringify!($c), offset: offset_of!($t, $($path).+), size: $wrap(size_of_pointee(member)), newer: $newer }
    }};
}

fn layout<T>(c_name: &'static str, fields: Vec<Field>) -> Layout {
    Layout {
        c_name,
        size: size_of::<T>(),
        align: align_of::<T>(),
        fields,
    }
}

fn layouts() -> Vec<Layout> {
    vec![
        layout::<io_sqring_offsets>(
            "io_sqring_offsets",
            vec![
                field!(io_sqring_offsets, head => head),
                field!(io_sqring_offsets, tail => tail),
                field!(io_sqring_offsets, ring_mask => ring_mask),
                field!(io_sqring_offsets, ring_entries => ring_entries),
                field!(io_sqring_offsets, flags => flags),
                field!(io_sqring_offsets, dropped => dropped),
                field!(io_sqring_offsets, array => array),
                field!(io_sqring_offsets, resv1 => resv1),
                field!(io_sqring_offsets, resv2 => resv2),
            ],
        ),
        layout::<io_cqring_offsets>(
            "io_cqring_offsets",
            vec![
                field!(io_cqring_offsets, head => head),
                field!(io_cqring_offsets, tail => tail),
                field!(io_cqring_offsets, ring_mask => ring_mask),
                field!(io_cqring_offsets, ring_entries => ring_entries),
                field!(io_cqring_offsets, overflow => overflow),
                field!(io_cqring_offsets, cqes => cqes),
                field!(io_cqring_offsets, flags => flags),
                field!(io_cqring_offsets, resv1 => resv1),
                field!(io_cqring_offsets, resv2 => resv2),
            ],
        ),
        layout::<io_uring_params>(
            "io_uring_params",
            vec![
                field!(io_uring_params, sq_entries => sq_entries),
                field!(io_uring_params, cq_entries => cq_entries),
                field!(io_uring_params, flags => flags),
                field!(io_uring_params, sq_thread_cpu => sq_thread_cpu),
                field!(io_uring_params, sq_thread_idle => sq_thread_idle),
                field!(io_uring_params, features => features),
                field!(io_uring_params, wq_fd => wq_fd),
                field!(io_uring_params, resv => resv),
                field!(io_uring_params, sq_off => sq_off),
                field!(io_uring_params, cq_off => cq_off),
            ],
        ),
        layout::<io_uring_sqe>(
            "io_uring_sqe",
            vec![
                field!(io_uring_sqe, opcode => opcode),
                field!(io_uring_sqe, flags => flags),
                field!(io_uring_sqe, ioprio => ioprio),
                field!(io_uring_sqe, fd => fd),
                field!(io_uring_sqe, off => off_u.off),
                field!(io_uring_sqe, addr2 => off_u.addr2),
                field!(io_uring_sqe, cmd_op => off_u.cmd.cmd_op),
                field!(io_uring_sqe, __pad1 => off_u.cmd.__pad1),
                field!(io_uring_sqe, addr => addr_u.addr),
                field!(io_uring_sqe, splice_off_in => addr_u.splice_off_in),
                field!(io_uring_sqe, level => addr_u.sockopt.level, newer),
                field!(io_uring_sqe, optname => addr_u.sockopt.optname, newer),
                field!(io_uring_sqe, len => len),
                field!(io_uring_sqe, rw_flags => op_flags.rw_flags),
                field!(io_uring_sqe, fsync_flags => op_flags.fsync_flags),
                field!(io_uring_sqe, poll_events => op_flags.poll_events),
                field!(io_uring_sqe, poll32_events => op_flags.poll32_events),
                field!(io_uring_sqe, sync_range_flags => op_flags.sync_range_flags),
                field!(io_uring_sqe, msg_flags => op_flags.msg_flags),
                field!(io_uring_sqe, timeout_flags => op_flags.timeout_flags),
                field!(io_uring_sqe, accept_flags => op_flags.accept_flags),
                field!(io_uring_sqe, cancel_flags => op_flags.cancel_flags),
                field!(io_uring_sqe, open_flags => op_flags.open_flags),
                field!(io_uring_sqe, statx_flags => op_flags.statx_flags),
                field!(io_uring_sqe, fadvise_advice => op_flags.fadvise_advice),
                field!(io_uring_sqe, splice_flags => op_flags.splice_flags),
                field!(io_uring_sqe, rename_flags => op_flags.rename_flags),
                field!(io_uring_sqe, unlink_flags => op_flags.unlink_flags),
                field!(io_uring_sqe, hardlink_flags => op_flags.hardlink_flags),
                field!(io_uring_sqe, xattr_flags => op_flags.xattr_flags),
                field!(io_uring_sqe, msg_ring_flags => op_flags.msg_ring_flags),
                field!(io_uring_sqe, uring_cmd_flags => op_flags.uring_cmd_flags),
                field!(io_uring_sqe, waitid_flags => op_flags.waitid_flags, newer),
                field!(io_uring_sqe, futex_flags => op_flags.futex_flags, newer),
                field!(io_uring_sqe, install_fd_flags => op_flags.install_fd_flags, newer),
                field!(io_uring_sqe, nop_flags => op_flags.nop_flags, newer),
                field!(io_uring_sqe, pipe_flags => op_flags.pipe_flags, newer),
                field!(io_uring_sqe, user_data => user_data),
                field!(io_uring_sqe, buf_index => buf_u.buf_index),
                field!(io_uring_sqe, buf_group => buf_u.buf_group),
                field!(io_uring_sqe, personality => personality),
                field!(io_uring_sqe, splice_fd_in => file_u.splice_fd_in),
                field!(io_uring_sqe, file_index => file_u.file_index),
                field!(io_uring_sqe, zcrx_ifq_idx => file_u.zcrx_ifq_idx, newer),
                field!(io_uring_sqe, optlen => file_u.optlen, newer),
                field!(io_uring_sqe, addr_len => file_u.addr_len.addr_len),
                field!(io_uring_sqe, __pad3 => file_u.addr_len.__pad3),
                field!(io_uring_sqe, addr3 => addr3_u.addr3.addr3),
                field!(io_uring_sqe, __pad2 => addr3_u.addr3.__pad2),
                field!(io_uring_sqe, attr_ptr => addr3_u.attr.attr_ptr, newer),
                field!(io_uring_sqe, attr_type_mask => addr3_u.attr.attr_type_mask, newer),
                field!(io_uring_sqe, optval => addr3_u.optval, newer),
                field!(io_uring_sqe, cmd => addr3_u.cmd),
            ],
        ),
        layout::<io_uring_cqe>(
            "io_uring_cqe",
            vec![
                field!(io_uring_cqe, user_data => user_data),
                field!(io_uring_cqe, res => res),
                field!(io_uring_cqe, flags => flags),
                field!(io_uring_cqe, big_cqe => big_cqe, flex),
            ],
        ),
        layout::<io_uring_probe_op>(
            "io_uring_probe_op",
            vec![
                field!(io_uring_probe_op, op => op),
                field!(io_uring_probe_op, resv => resv),
                field!(io_uring_probe_op, flags => flags),
                field!(io_uring_probe_op, resv2 => resv2),
            ],
        ),
        layout::<io_uring_probe>(
            "io_uring_probe",
            vec![
                field!(io_uring_probe, last_op => last_op),
                field!(io_uring_probe, ops_len => ops_len),
                field!(io_uring_probe, resv => resv),
                field!(io_uring_probe, resv2 => resv2),
                field!(io_uring_probe, ops => ops, flex),
            ],
        ),
        layout::<io_uring_restriction>(
            "io_uring_restriction",
            vec![
                field!(io_uring_restriction, opcode => opcode),
                field!(io_uring_restriction, register_op => op_u.register_op),
                field!(io_uring_restriction, sqe_op => op_u.sqe_op),
                field!(io_uring_restriction, sqe_flags => op_u.sqe_flags),
                field!(io_uring_restriction, resv => resv),
                field!(io_uring_restriction, resv2 => resv2),
            ],
        ),
    ]
}

/// Identifiers the header spells out anywhere (whole words).
fn header_words() -> BTreeSet<String> {
    let text = std::fs::read_to_string(HEADER).expect("installed io_uring header");
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The constants and opcodes the Rust side defines, as (C name, value).
fn rust_values() -> Vec<(String, i64)> {
    let mut values: Vec<(String, i64)> = ABI_CONSTANTS
        .iter()
        .map(|&(n, v)| (n.to_owned(), v))
        .collect();
    values.extend(
        IoringOp::ALL
            .iter()
            .map(|&op| (op.c_name().to_owned(), i64::from(op as u8))),
    );
    values
}

/// Writes, compiles and runs the probe program; returns its `name value` lines.
fn run_c_probe(
    dir: &Path,
    layouts: &[Layout],
    words: &BTreeSet<String>,
    constants: &[&str],
) -> BTreeMap<String, i64> {
    let mut c =
        String::from("#include <stdio.h>\n#include <stddef.h>\n#include <linux/io_uring.h>\n");
    c.push_str("#define P(n, v) printf(\"%s %lld\\n\", n, (long long)(v))\nint main(void) {\n");
    for l in layouts {
        let s = l.c_name;
        writeln!(c, "P(\"sizeof.{s}\", sizeof(struct {s}));").unwrap();
        writeln!(c, "P(\"alignof.{s}\", _Alignof(struct {s}));").unwrap();
        for f in l.fields.iter().filter(|f| words.contains(f.c_name)) {
            let m = f.c_name;
            writeln!(c, "P(\"offsetof.{s}.{m}\", offsetof(struct {s}, {m}));").unwrap();
            if f.size.is_some() {
                writeln!(c, "P(\"sizeof.{s}.{m}\", sizeof(((struct {s} *)0)->{m}));").unwrap();
            }
        }
    }
    for name in constants {
        writeln!(c, "P(\"{name}\", {name});").unwrap();
    }
    c.push_str("P(\"IORING_OP_LAST\", IORING_OP_LAST);\nreturn 0;\n}\n");

    let src = dir.join("abi.c");
    let exe = dir.join("abi");
    std::fs::write(&src, c).expect("write C source");
    let out = Command::new("gcc")
        .arg("-std=gnu11")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .output()
        .expect("run gcc");
    assert!(
        out.status.success(),
        "gcc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&exe).output().expect("run the C probe");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .expect("ASCII output")
        .lines()
        .map(|line| {
            let (name, value) = line.split_once(' ').expect("`name value` line");
            (name.to_owned(), value.parse().expect("integer value"))
        })
        .collect()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("util-io-uring-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn rust_abi_matches_installed_header() {
    let words = header_words();
    let layouts = layouts();
    let values = rust_values();
    let in_header: Vec<&str> = values
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| words.contains(*n))
        .collect();
    let tmp = TempDir::new("abi");
    let c = run_c_probe(&tmp.0, &layouts, &words, &in_header);

    // Members not marked `newer` must all be in the header (catches misspelt C names); the
    // `newer` ones are compared as soon as an installed header defines them.
    for l in &layouts {
        for f in &l.fields {
            assert!(
                f.newer || words.contains(f.c_name),
                "{}.{} not in the header",
                l.c_name,
                f.c_name
            );
            assert!(
                f.offset + f.size.unwrap_or(0) <= l.size,
                "{}.{} outside the struct",
                l.c_name,
                f.c_name
            );
        }
    }
    let mut checked = 0;
    let mut mismatches = Vec::new();
    let mut expect = |name: String, rust: i64| match c.get(&name) {
        Some(&cv) if cv == rust => checked += 1,
        Some(&cv) => mismatches.push(format!("{name}: rust {rust}, C {cv}")),
        None => mismatches.push(format!("{name}: missing from C output")),
    };
    for l in &layouts {
        expect(format!("sizeof.{}", l.c_name), l.size as i64);
        expect(format!("alignof.{}", l.c_name), l.align as i64);
        for f in l.fields.iter().filter(|f| words.contains(f.c_name)) {
            expect(
                format!("offsetof.{}.{}", l.c_name, f.c_name),
                f.offset as i64,
            );
            if let Some(size) = f.size {
                expect(format!("sizeof.{}.{}", l.c_name, f.c_name), size as i64);
            }
        }
    }
    for (name, value) in values.iter().filter(|(n, _)| words.contains(n)) {
        expect(name.clone(), *value);
    }
    assert!(
        mismatches.is_empty(),
        "ABI mismatches:\n{}",
        mismatches.join("\n")
    );
    // 8 structs and well over a hundred fields and constants went through the comparison.
    assert!(checked > 200, "only {checked} values compared");

    // The opcode list covers every opcode the header defines, and extends it.
    let header_last = c["IORING_OP_LAST"];
    let header_ops = IoringOp::ALL
        .iter()
        .filter(|op| words.contains(op.c_name()))
        .count();
    assert_eq!(
        header_ops as i64, header_last,
        "every header opcode is defined in Rust"
    );
    assert!(i64::from(IORING_OP_LAST) >= header_last);
    assert_eq!(usize::from(IORING_OP_LAST), IoringOp::ALL.len());
    for (i, op) in IoringOp::ALL.iter().enumerate() {
        assert_eq!(usize::from(*op as u8), i, "{} out of order", op.c_name());
        assert_eq!(IoringOp::from_u8(*op as u8), Some(*op));
    }
}

#[test]
fn rust_defines_every_constant_family_the_issue_names() {
    let prefixes = [
        "IORING_SETUP_",
        "IORING_ENTER_",
        "IORING_FEAT_",
        "IOSQE_",
        "IORING_OFF_",
        "IORING_SQ_",
        "IORING_CQ_",
        "IORING_CQE_",
        "IORING_REGISTER_",
        "IORING_UNREGISTER_",
        "IORING_FSYNC_",
        "IORING_RESTRICTION_",
    ];
    // The `_LAST` entries are the header's counts, not the running kernel's: not defined.
    let exempt = ["IORING_REGISTER_LAST", "IORING_RESTRICTION_LAST"];
    let defined: BTreeSet<&str> = ABI_CONSTANTS.iter().map(|(n, _)| *n).collect();
    let missing: Vec<String> = header_words()
        .into_iter()
        .filter(|w| prefixes.iter().any(|p| w.starts_with(p)) && !w.ends_with('_'))
        .filter(|w| !exempt.contains(&w.as_str()) && !defined.contains(w.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "header constants missing in Rust: {missing:?}"
    );
}
