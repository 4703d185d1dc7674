//! Our own io_uring, from the kernel ABI up (see issue 2).
