//! The Linux AIO structs and constants in `util::aio::abi` must match `<linux/aio_abi.h>`.
//!
//! A small C program is compiled with gcc against the installed kernel header and prints the
//! size of each struct, the offset and size of every field, and every constant; each line is
//! compared with the value computed on the Rust side. No number is written down by hand.

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::path::PathBuf;
use std::process::Command;

use util::aio::abi::{self, io_event, iocb};

/// Prints one `name value` line per fact; `F(s, f)` gives a field's offset and size.
const C_SOURCE: &str = r#"
#include <stdio.h>
#include <stddef.h>
#include <linux/aio_abi.h>
#define S(t) printf("sizeof %s %zu\n", #t, sizeof(struct t))
#define F(t, f) printf("offsetof %s.%s %zu\nsizeof %s.%s %zu\n", #t, #f, offsetof(struct t, f), #t, #f, sizeof(((struct t *)0)->f))
#define C(c) printf("const %s %lld\n", #c, (long long)(c))
int main(void) {
    S(iocb); S(io_event);
    F(iocb, aio_data); F(iocb, aio_key); F(iocb, aio_rw_flags); F(iocb, aio_lio_opcode);
    F(iocb, aio_reqprio); F(iocb, aio_fildes); F(iocb, aio_buf); F(iocb, aio_nbytes);
    F(iocb, aio_offset); F(iocb, aio_reserved2); F(iocb, aio_flags); F(iocb, aio_resfd);
    F(io_event, data); F(io_event, obj); F(io_event, res); F(io_event, res2);
    C(IOCB_CMD_PREAD); C(IOCB_CMD_PWRITE); C(IOCB_CMD_FSYNC); C(IOCB_CMD_FDSYNC);
    C(IOCB_CMD_NOOP); C(IOCB_CMD_PREADV); C(IOCB_CMD_PWRITEV);
    C(IOCB_FLAG_RESFD); C(IOCB_FLAG_IOPRIO);
    printf("sizeof aio_context_t %zu\n", sizeof(aio_context_t));
    return 0;
}
"#;

fn c_facts() -> BTreeMap<String, i64> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("aio_abi_layout");
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let src = dir.join("layout.c");
    let exe = dir.join("layout");
    std::fs::write(&src, C_SOURCE).expect("write C source");
    let status = Command::new("gcc")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("gcc must be installed to check the AIO ABI");
    assert!(status.success(), "gcc failed on the layout program");
    let output = Command::new(&exe).output().expect("run layout program");
    assert!(output.status.success());
    String::from_utf8(output.stdout)
        .expect("utf-8 output")
        .lines()
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            (name.to_string(), value.parse().expect("integer"))
        })
        .collect()
}

macro_rules! field {
    ($facts:ident, $t:ident, $f:ident) => {{
        let probe = $t::default();
        $facts.insert(
            format!("offsetof {}.{}", stringify!($t), stringify!($f)),
            offset_of!($t, $f) as i64,
        );
        $facts.insert(
            format!("sizeof {}.{}", stringify!($t), stringify!($f)),
            std::mem::size_of_val(&probe.$f) as i64,
        );
    }};
}

macro_rules! constant {
    ($facts:ident, $c:ident) => {
        $facts.insert(format!("const {}", stringify!($c)), i64::from(abi::$c));
    };
}

fn rust_facts() -> BTreeMap<String, i64> {
    let mut facts = BTreeMap::new();
    facts.insert("sizeof iocb".to_string(), size_of::<iocb>() as i64);
    facts.insert("sizeof io_event".to_string(), size_of::<io_event>() as i64);
    facts.insert(
        "sizeof aio_context_t".to_string(),
        size_of::<abi::aio_context_t>() as i64,
    );
    field!(facts, iocb, aio_data);
    field!(facts, iocb, aio_key);
    field!(facts, iocb, aio_rw_flags);
    field!(facts, iocb, aio_lio_opcode);
    field!(facts, iocb, aio_reqprio);
    field!(facts, iocb, aio_fildes);
    field!(facts, iocb, aio_buf);
    field!(facts, iocb, aio_nbytes);
    field!(facts, iocb, aio_offset);
    field!(facts, iocb, aio_reserved2);
    field!(facts, iocb, aio_flags);
    field!(facts, iocb, aio_resfd);
    field!(facts, io_event, data);
    field!(facts, io_event, obj);
    field!(facts, io_event, res);
    field!(facts, io_event, res2);
    constant!(facts, IOCB_CMD_PREAD);
    constant!(facts, IOCB_CMD_PWRITE);
    constant!(facts, IOCB_CMD_FSYNC);
    constant!(facts, IOCB_CMD_FDSYNC);
    constant!(facts, IOCB_CMD_NOOP);
    constant!(facts, IOCB_CMD_PREADV);
    constant!(facts, IOCB_CMD_PWRITEV);
    constant!(facts, IOCB_FLAG_RESFD);
    constant!(facts, IOCB_FLAG_IOPRIO);
    facts
}

#[test]
fn aio_abi_matches_kernel_header() {
    let c = c_facts();
    let rust = rust_facts();
    assert_eq!(
        c.len(),
        rust.len(),
        "both sides must describe the same facts"
    );
    for (name, value) in &c {
        assert_eq!(
            rust.get(name),
            Some(value),
            "{name} differs from <linux/aio_abi.h>"
        );
    }
}
