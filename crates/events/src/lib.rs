//! Events: what runs functions besides a caller waiting for the answer. `queue` is the durable
//! queue of asynchronous invocations (accepted means persisted; at-least-once attempts with
//! retries, a maximum event age, a dead-letter list and an on-failure function; idempotency keys);
//! `triggers` turns cron schedules and topic subscriptions into events on that queue.
#![forbid(unsafe_code)]

pub mod queue;
pub mod triggers;

pub use queue::{AsyncQueue, EventsError, Placement, QueueLimits, ServiceSink, SinkError, Target, read_kept};
pub use triggers::{EventMeta, Schedule, Triggers};
