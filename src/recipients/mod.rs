//! Recipients (GDPR Art. 19): downstream systems and processors told of every erasure,
//! rectification and restriction, with a delivery guarantee and a record on the request.
//!
//! | module      | owns                                                                      |
//! |-------------|---------------------------------------------------------------------------|
//! | `config`    | `[[catalog]] kind = "recipient"` entries and the `[recipients]` settings  |
//! | `event`     | what each recipient may see (the outbox row's data) and the CloudEvent    |
//! | `signature` | Standard Webhooks signatures: sign, and verify as a receiver does         |
//! | `transport` | the send trait; `webhook` and `nats` (JetStream) implement it             |
//! | `dispatch`  | the dispatcher: claim under a lease, send, record, retry with backoff     |
//!
//! The outbox itself is in the ledger (`ledger::deliveries`): rows written with the request and
//! armed in the transaction that records its stores' success, so an event is never lost and
//! never sent for work that did not happen.

pub mod config;
pub mod dispatch;
pub mod event;
pub mod nats;
pub mod signature;
pub mod transport;
pub mod webhook;

pub use config::{RecipientEntry, RecipientsConfig};
pub use dispatch::{Dispatcher, Round};
pub use event::{plan, NewDelivery};
pub use transport::{SendError, Transport};
