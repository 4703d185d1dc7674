//! x86_64 Linux direct boot: bzImage and vmlinux loading, boot_params, page tables, MP table.

#![deny(missing_docs)]
