//! The command-line parser (`machine_manager::config::parse_args`): every option, its
//! `key=value` lists and their checks.
//!
//! Input: the arguments (without the program name), separated by NUL bytes.
//!
//! Checked: nothing panics; a refused command line gets a non-empty one-line error.

#![no_main]

use libfuzzer_sys::fuzz_target;
use machine_manager::config::parse_args;

fuzz_target!(|data: &[u8]| {
    let args: Vec<String> = data
        .split(|&b| b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    match parse_args(args) {
        Ok(config) => {
            let _ = format!("{config:?}");
        }
        Err(e) => {
            let message = e.to_string();
            assert!(!message.is_empty());
            assert!(!message.contains('\n'), "{message:?}");
        }
    }
});
