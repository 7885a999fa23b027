//! Sessions: one conversation = one session key = one worker thread that owns one `claude`.
//!
//! `identity` says which key a request belongs to, `turn` is what travels between a
//! response and a worker, `registry` finds or creates the worker for a key, and `worker`
//! is the per-session state machine that runs turns one at a time.

pub mod identity;
pub mod registry;
pub mod turn;
pub mod worker;

pub use registry::{Registry, SubmitError};
