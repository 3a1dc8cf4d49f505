//! One module per subcommand: its clap arguments and its `exec`.

pub mod baseline;
pub mod convert;
pub mod info;
pub mod inject;
pub mod inspect;
pub mod migrate;
pub mod rollback;
pub mod vsphere;
pub mod wave;
