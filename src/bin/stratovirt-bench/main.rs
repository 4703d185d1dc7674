//! `stratovirt-bench`: device-level benchmarks of the virtio-blk path (see docs/benchmark.md).

fn main() {
    eprintln!("stratovirt-bench: usage: stratovirt-bench blk [OPTIONS]");
    std::process::exit(2);
}
