pub(super) mod cpu;
// RAPPORT PATCH: the blocked CPU attention kernel `cpu` dispatches to.
mod cpu_blocked;
mod flash;
mod naive;
mod sinks;

pub(crate) use flash::flash_attn;
pub(crate) use naive::{maybe_synchronize, naive_sdpa};
pub(crate) use sinks::sinks_attn;
