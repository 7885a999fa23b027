//! Sessions: one conversation = one session key = one worker thread that owns one `claude`.
//!
//! `identity` says which key a request belongs to (with `recent_requests`, the requests an
//! identical retry may attach to), `turn` is what travels between a
//! response and a worker, `pending` the questions a suspended turn waits on, `registry`
//! finds or creates the worker for a key and enforces the host-wide limits, `worker` is the
//! per-session state machine that runs turns one at a time, `store` persists which Claude
//! conversation each key is, and `workspace` says where a session's Claude runs.

pub mod identity;
pub mod pending;
pub mod recent_requests;
pub mod registry;
pub mod shared;
pub mod store;
pub mod turn;
pub mod worker;
pub mod workspace;

pub use registry::{Registry, SubmitError};
