//! `stratovirt`: the micro-VM monitor's command-line entry point.

fn main() {
    eprintln!("stratovirt: not yet able to boot a VM");
    std::process::exit(1);
}
