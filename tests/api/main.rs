//! Black-box tests of the service through a real gRPC client on a random loopback port, against
//! real SQLite and Postgres databases and real files.

#[path = "../support/mod.rs"]
mod support;

mod helpers;

mod audit;
mod catalog;
mod deletion;
mod exactness;
mod export;
mod faults;
mod idempotency;
mod lifecycle;
mod metrics;
mod platform;
mod protocol;
mod recipients;
mod rectification;
mod remote;
mod retention;
mod security;
mod streams;
mod validation;
