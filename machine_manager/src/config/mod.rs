//! The command line: parsing `-kernel`, `-drive`, `-device`, ... into a [`VmConfig`]-to-be.
