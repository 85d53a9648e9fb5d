//! dsr — a data-subject-rights service: export, erase and rectify everything a multi-tenant
//! voice-agent platform holds on one person, over gRPC, with one typed outcome per store.
//!
//! | module      | owns                                                                   |
//! |-------------|------------------------------------------------------------------------|
//! | `domain`    | subjects, identifiers, request kinds and states, deadlines (pure)      |
//! | `api`       | the tonic services, wire ↔ domain conversion, errors → status codes    |
//! | `ledger`    | the service's own durable state: requests, tasks, the hash-chained log |
//! | `engine`    | workers: claim under lease, run, retry with backoff, record outcomes   |
//! | `stores`    | small traits by concern (`concerns`) and one adapter per store         |
//! | `adapter`   | remote stores' gRPC contract, its conformance check, an example adapter |
//! | `resolve`   | the subject → one person, their identifiers and the keys of their records |
//! | `retention` | the retention sweep: records past their period leave, holds are kept   |
//! | `startup`   | building and running the server; graceful shutdown                     |
//! | `cli`       | the `dsr` command line: server commands and a client for people        |
//! | `catalog`   | stores described in the configuration file: table, columns, links, erasure |
//! | `config`    | flags, environment and TOML configuration                              |
//! | `db`        | one handle over SQLite or Postgres                                     |
//! | `files`     | private files: data directory 0700, files 0600 whatever the umask      |
//! | `seed`      | deterministic synthetic data in the reference schema                   |
//! | `bench`     | `dsr bench`: measurements next to a floor from the same run            |
//! | `chaos`     | `dsr chaos`: the fault campaign (kills, pauses, Postgres restarts, failing stores) |
//! | `privacy`   | keyed hashes: the only way an identifier reaches a log                 |
//! | `clock`     | injected time                                                          |
//! | `telemetry` | logs, OpenTelemetry traces (OTLP), the gRPC server span                 |
//! | `metrics`   | Prometheus `/metrics`: counters, durations, deadlines from the ledger  |
//! | `recipients`| GDPR Art. 19: tell downstream recipients through an outbox (webhook, NATS) |

pub mod adapter;
pub mod api;
pub mod bench;
pub mod catalog;
pub mod chaos;
pub mod cli;
pub mod clock;
pub mod config;
pub mod db;
pub mod domain;
pub mod engine;
pub mod export;
pub mod files;
pub mod ledger;
pub mod metrics;
pub mod privacy;
pub mod recipients;
pub mod resolve;
pub mod retention;
pub mod seed;
pub mod startup;
pub mod stores;
pub mod telemetry;
