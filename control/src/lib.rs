//! TOML tables: schema, validation with spans, compilation into snapshots, file watch and admin API.
//!
//! The path of a table change ([`load::compile`] runs the first four):
//! text → [`tree::parse`] (spanned TOML) → [`de::decode`] into [`schema::Tables`]
//! (every unknown key and wrong type reported; [`fastde`] does these two steps in one
//! for a text that decodes without error, the usual case) → [`validate::validate`] (references,
//! addresses, regexes, certificates; every error with file:line:col and a hint) →
//! [`snapshot::Snapshot`] (lookup-ready) → [`publish::Publisher`] (one atomic swap).
//! Sources of changes: the tables file ([`watch`]), the admin API ([`admin`]), and
//! SMI resources converted offline ([`smi`]). [`store::TableStore`] ties a tables
//! file to a publisher.

pub mod admin;
pub mod ca;
pub mod certs;
pub mod check;
pub mod de;
pub mod diag;
pub mod etcd;
pub mod fastde;
pub mod kernelconn;
pub mod load;
pub mod node;
pub mod openmetrics;
pub mod plane;
pub mod publish;
pub mod schema;
pub mod smi;
pub mod snapshot;
pub mod source;
pub mod store;
pub mod tree;
pub mod validate;
pub mod watch;

pub use diag::{Diagnostic, Diagnostics};
pub use load::{compile, compile_file, Compiled};
pub use plane::ControlPlane;
pub use publish::Publisher;
pub use schema::Tables;
pub use snapshot::Snapshot;
pub use source::{Source, Span};
pub use store::TableStore;
pub use validate::Context;
