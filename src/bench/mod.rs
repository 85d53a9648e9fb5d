//! `dsr bench`: reproducible measurements, each next to a floor measured in the same run.
//!
//! - `deletions`: erasures through the service against hand-written SQL and object deletes.
//! - `export`: one subject's archive (≥ 1 GiB of recordings) against `cat` of the same files,
//!   with the server's peak memory.
//! - `sweep`: the retention sweep over expired call logs against a batched DELETE.
mod deletions;
mod export;
mod sweep;

pub use deletions::deletions;
pub use export::export;
pub use sweep::sweep;
