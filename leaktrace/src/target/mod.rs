//! The traced process: its pid, executable and (read-only) memory.
pub mod clock;
pub mod elf;
pub mod host;
pub mod launch;
pub mod maps;
pub mod memory;
pub mod privileges;
pub mod process;
pub mod procfs;
pub mod usage;
