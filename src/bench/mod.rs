//! `dsr bench`: reproducible measurements, each next to a floor measured in the same run.
//!
//! - `deletions`: erasures through the service against hand-written SQL and object deletes.
//! - `export`: one subject's archive (≥ 1 GiB of recordings) against `cat` of the same files,
//!   with the server's peak memory.
//! - `sweep`: a retention sweep over a million expired call logs against a batched `DELETE`.
//! - `submit`: SubmitDeletion acknowledgements per second against pgbench's one-row inserts.
//! - `latency`: one call at a time on an idle service: `GetRequest`, and a deletion from submit to
//!   COMPLETED, as p50 and p99.
mod deletions;
mod export;
mod latency;
mod submit;
mod sweep;

pub use deletions::deletions;
pub use export::export;
pub use latency::latency;
pub use submit::submit;
pub use sweep::sweep;
