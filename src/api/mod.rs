//! The gRPC edge: generated types (`pb`, which never leave this module tree), conversion between
//! them and the domain, the error mapping to status codes, and the three services.

mod audit;
mod auth;
mod convert;
mod download;
mod error;
mod holds;
mod rights;
mod slots;
pub mod status_codes;
pub mod validate;
mod watch;

pub use audit::AuditService;
pub use auth::{AuthInterceptor, Authenticator, Caller, Scope};
pub use error::ApiError;
pub use holds::HoldsService;
pub use rights::{RightsService, ServiceContext};
pub use slots::{SlotGuard, SlotRefused, StreamSlots};

/// Code generated from `proto/dsr/v1/*.proto`.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("dsr.v1");

    /// The encoded descriptors of the contract, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/dsr_descriptor.bin"));
}
