//! Pure types and logic, no I/O: names, field types and coercion, domains, field mapping,
//! the three-way merge and the compiled `Plan`.

pub mod auth;
pub mod filter;
pub mod kind;
pub mod mapping;
pub mod mask;
pub mod merge;
pub mod mirror;
pub mod names;
pub mod plan;
pub mod transform;
pub mod value;

pub use filter::{Condition, Domain, Op};
pub use mapping::{Direction, ExternalField, FieldPair, JsonPath, Reference, ValueMap};
pub use merge::{Priority, merge};
pub use names::{Ident, SyncCode};
pub use plan::Plan;
pub use value::FieldType;
