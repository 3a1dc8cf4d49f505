//! The ground floor for bytes v2k does not control (../shared/SECURITY.md): every crate
//! that opens a file named by a user, a plan or a VM's metadata does it through
//! [`file`], and everything that shows such text on a terminal escapes it through
//! [`term`]. No other v2k crate is a dependency, so the converters, the inventory,
//! the vSphere client, the wave planner and the CLI can all reach it.

pub mod file;
pub mod term;
