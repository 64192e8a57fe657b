//! The command line. The clap definitions of both binaries live here so that man pages and
//! completions come from the very structures the binaries parse; so does what the client
//! shows people: tables per list and times (`render`), YAML (`yaml`), one sentence per
//! problem code in CLI terms (`advice`), dynamic completion (`complete`) and the
//! configuration's manual page (`config_man`).

pub mod advice;
pub mod client;
pub mod complete;
pub mod config_man;
pub mod daemon_args;
pub mod render;
pub mod yaml;
