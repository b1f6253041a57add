//! `bronze`: Kafka change events into exactly-once Delta Lake tables.
//!
//! The modules follow one message's path:
//! [`source`] (Kafka consumer group) → [`decode`] (Debezium / JSON) → [`transform`] (contract,
//! coercion, metadata) → [`buffer`] (Arrow micro-batches, dedup) → [`sink`] (Parquet + Delta commit with
//! offsets). [`pipeline`] runs that loop; [`config`] and [`contract`] describe what to run;
//! [`observability`] installs logs and metrics; [`audit`] keeps the ledger of runs and commits;
//! [`jobs`] are the batch runs beside it (backfill, extract, dead-letter replay, schema review);
//! [`maintenance`] compacts and vacuums the tables; [`control`] runs backfill and maintenance requests
//! posted on the control topic; [`txn`] names the Kafka partitions, offset ranges and Delta txn app
//! ids of the exactly-once protocol.

pub mod audit;
pub mod buffer;
pub mod catalog;
pub mod config;
pub mod contract;
pub mod control;
pub mod decode;
pub mod jobs;
pub mod maintenance;
pub mod observability;
pub mod pipeline;
pub mod sink;
pub mod source;
pub mod transform;
pub mod txn;
