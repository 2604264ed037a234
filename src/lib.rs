//! recsync: a bidirectional record synchronizer.
//!
//! Data flows one way: `config` compiles TOML into a `domain::Plan`; `store` persists records,
//! links, the outbox and the change-control log; `http` serves probes and the API. A module
//! imports only from modules before it in that flow; `domain` imports nothing from the crate.

pub mod app;
pub mod audit;
pub mod cli;
pub mod config;
pub mod connectors;
pub mod crash;
pub mod domain;
pub mod engine;
pub mod http;
pub mod metrics;
/// The reference peer and the fakes (crate `recsync-fakes`, feature `fakes`).
#[cfg(feature = "fakes")]
pub use recsync_fakes as peer;
pub mod store;
pub mod telemetry;
