//! Asynchronous invocations: a function's retry policy, and the queued events as the API shows them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::validate::{self, Invalid};
use crate::{Outcome, rfc3339};

/// Most retries after the first attempt (Lambda's limit).
pub const MAX_RETRIES: u32 = 2;
/// Shortest and longest age of an event before it is given up, in seconds (Lambda's range).
pub const EVENT_AGE_S_RANGE: (u64, u64) = (60, 21_600);
/// Shortest and longest wait before the first retry, in milliseconds.
pub const RETRY_DELAY_MS_RANGE: (u64, u64) = (10, 600_000);
/// Largest payload of an asynchronous invocation (Lambda's, since 2025).
pub const MAX_ASYNC_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Header that asks for an asynchronous invocation when its value is `Event`.
pub const INVOCATION_TYPE_HEADER: &str = "x-hangar-invocation-type";
/// Header whose value deduplicates asynchronous invocations of a function.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

/// What happens to a function's asynchronous invocations (`async` in its configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AsyncConfig {
    /// Retries after a failed first attempt (0..=2; 2 like Lambda). Throttled attempts are
    /// tried again without counting.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// Events older than this many seconds are given up (60..=21600, default 21600: 6 hours).
    #[serde(default = "default_age")]
    pub max_event_age_s: u64,
    /// Wait before the first retry in milliseconds, doubled for each further one (10..=600000,
    /// default 1000).
    #[serde(default = "default_delay")]
    pub retry_delay_ms: u64,
    /// A function of the same namespace that receives every event given up, as an
    /// asynchronous invocation whose payload is a Lambda-style destination record. Given-up
    /// events are also kept in the dead-letter list (`state = failed`) either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<String>,
}

fn default_retries() -> u32 {
    MAX_RETRIES
}
fn default_age() -> u64 {
    EVENT_AGE_S_RANGE.1
}
fn default_delay() -> u64 {
    1000
}

impl Default for AsyncConfig {
    fn default() -> Self {
        AsyncConfig { max_retries: default_retries(), max_event_age_s: default_age(), retry_delay_ms: default_delay(), on_failure: None }
    }
}

impl AsyncConfig {
    pub fn is_default(&self) -> bool {
        *self == AsyncConfig::default()
    }

    /// Checks the ranges; whether `on_failure` names a function is the server's to check.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.max_retries > MAX_RETRIES {
            return Err(Invalid::new("async.max_retries", format!("{} is out of range: choose 0 to {MAX_RETRIES}", self.max_retries)));
        }
        let (lo, hi) = EVENT_AGE_S_RANGE;
        if !(lo..=hi).contains(&self.max_event_age_s) {
            return Err(Invalid::new("async.max_event_age_s", format!("{} s is out of range: choose {lo} to {hi} s", self.max_event_age_s)));
        }
        let (lo, hi) = RETRY_DELAY_MS_RANGE;
        if !(lo..=hi).contains(&self.retry_delay_ms) {
            return Err(Invalid::new("async.retry_delay_ms", format!("{} ms is out of range: choose {lo} to {hi} ms", self.retry_delay_ms)));
        }
        if let Some(f) = &self.on_failure {
            validate::name("async.on_failure", f)?;
        }
        Ok(())
    }

    /// The wait before attempt `attempt + 1`, after `attempt` failed ones (1 → the base delay).
    pub fn backoff_ms(&self, attempt: u32) -> u64 {
        self.retry_delay_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(20))
    }
}

wire_enum! {
    /// Where an asynchronous invocation is.
    AsyncState, "state" {
        /// Accepted and persisted; waiting for its (next) attempt.
        Queued = "queued",
        /// An attempt is running.
        Running = "running",
        /// An attempt answered with a 2xx status.
        Succeeded = "succeeded",
        /// Given up: retries exhausted, too old, or the function is gone. This is the
        /// dead-letter list.
        Failed = "failed",
    }
}

wire_enum! {
    /// What receives an event.
    TargetKind, "target kind" {
        /// A function: the event is its invocation's body (`POST /`).
        Function = "function",
        /// A service: the event is POSTed to `path` on a ready instance.
        Service = "service",
    }
}

/// One attempt of an asynchronous invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    /// The invocation record of this attempt (`GET /v1/invocations/{id}`); functions only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation_id: Option<String>,
    /// Unix milliseconds when it started.
    pub started_ms: i64,
    pub outcome: Outcome,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An asynchronous invocation as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsyncRecord {
    pub id: String,
    pub namespace: String,
    pub kind: TargetKind,
    /// The function's or service's name.
    pub target: String,
    /// The path a service receives the event at.
    pub path: Option<String>,
    pub payload: Vec<u8>,
    pub content_type: Option<String>,
    pub idempotency_key: Option<String>,
    pub state: AsyncState,
    pub attempts: Vec<Attempt>,
    pub accepted_ms: i64,
    /// When the next attempt is due (queued ones).
    pub next_ms: i64,
    pub finished_ms: Option<i64>,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// The asynchronous invocation that carried the failure to `on_failure`, if any.
    pub destination_id: Option<String>,
    /// The `traceparent` of the span that queued it: its attempts continue that trace.
    pub trace: Option<String>,
}

impl AsyncRecord {
    pub fn to_api(&self) -> AsyncInvocation {
        AsyncInvocation {
            id: self.id.clone(),
            namespace: self.namespace.clone(),
            kind: self.kind,
            target: self.target.clone(),
            path: self.path.clone(),
            state: self.state,
            accepted_at: rfc3339(self.accepted_ms),
            next_attempt_at: (self.state == AsyncState::Queued).then(|| rfc3339(self.next_ms)),
            finished_at: self.finished_ms.map(rfc3339),
            idempotency_key: self.idempotency_key.clone(),
            payload_bytes: self.payload.len() as u64,
            attempts: self.attempts.clone(),
            error: self.error.clone(),
            destination_id: self.destination_id.clone(),
        }
    }
}

/// An asynchronous invocation, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AsyncInvocation {
    pub id: String,
    pub namespace: String,
    pub kind: TargetKind,
    /// The function's or service's name.
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub state: AsyncState,
    /// RFC 3339 time it was accepted (and persisted).
    pub accepted_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    pub payload_bytes: u64,
    pub attempts: Vec<Attempt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The invocation of the `on_failure` function that received this one's failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_id: Option<String>,
}

/// Answer to an asynchronous invoke (202).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AsyncAccepted {
    pub id: String,
    pub state: AsyncState,
    /// True when the idempotency key was seen before: nothing new was queued and `id` is the
    /// earlier invocation's.
    pub duplicate: bool,
}

/// Checks an idempotency key: printable ASCII, at most 256 bytes.
pub fn idempotency_key(key: &str) -> Result<(), Invalid> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Invalid::new(IDEMPOTENCY_KEY_HEADER, format!("must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} printable ASCII characters without spaces")));
    }
    Ok(())
}

/// A trigger: a cron schedule or a topic subscription, delivering events to a function or a
/// service through the asynchronous queue (same retries, dead letters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerConfig {
    /// A cron schedule: 5 fields (minute hour day-of-month month day-of-week) or 6 with
    /// seconds first, e.g. `*/5 * * * *`, `0 30 9 * * MON-FRI`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// IANA time zone of the schedule, e.g. `Europe/Berlin` (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// A topic of the namespace: every event published to it is delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The function that receives the events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// The service that receives the events (POST to `path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Where a service receives events (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The `data` of every cron event (default `{}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub data: Option<serde_json::Value>,
}

impl TriggerConfig {
    /// Checks the shape; the cron expression, time zone and target are the server's to check.
    pub fn validate(&self) -> Result<(), Invalid> {
        match (&self.cron, &self.topic) {
            (Some(_), Some(_)) | (None, None) => return Err(Invalid::new("cron", "give exactly one of `cron` (a schedule) or `topic`")),
            (None, Some(t)) => {
                topic(t)?;
                if self.timezone.is_some() {
                    return Err(Invalid::new("timezone", "only schedules (`cron`) have a time zone"));
                }
                if self.data.is_some() {
                    return Err(Invalid::new("data", "only schedules (`cron`) carry fixed data; a topic's events bring their own"));
                }
            }
            (Some(c), None) if c.trim().is_empty() || c.len() > 256 => return Err(Invalid::new("cron", "must be a cron expression of at most 256 characters")),
            (Some(_), None) => {}
        }
        match (&self.function, &self.service) {
            (Some(_), Some(_)) | (None, None) => return Err(Invalid::new("function", "give exactly one target: `function` or `service`")),
            (Some(f), None) => {
                validate::name("function", f)?;
                if self.path.is_some() {
                    return Err(Invalid::new("path", "only services receive events at a path"));
                }
            }
            (None, Some(s)) => validate::name("service", s)?,
        }
        if let Some(p) = &self.path
            && (!p.starts_with('/') || p.len() > 1024 || p.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()))
        {
            return Err(Invalid::new("path", format!("`{p}` is not a path like /events (at most 1024 characters, no spaces)")));
        }
        Ok(())
    }
}

/// The rule for topic names: `[a-z0-9][a-z0-9._-]{0,127}`.
pub fn topic(t: &str) -> Result<(), Invalid> {
    let ok = !t.is_empty()
        && t.len() <= 128
        && t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && t.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            "topic",
            format!(
                "`{t}` is not a valid topic: use 1 to 128 lowercase letters, digits, dots, dashes and underscores, starting with a letter or digit (e.g. `orders.created`)"
            ),
        ))
    }
}

/// A trigger as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TriggerInfo {
    pub namespace: String,
    pub name: String,
    pub config: TriggerConfig,
    pub created_at: String,
    /// The scheduled time of the last cron event queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fired_at: Option<String>,
    /// When the schedule fires next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_fire_at: Option<String>,
}

/// One delivery of a published event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    pub trigger: String,
    pub kind: TargetKind,
    pub target: String,
    /// The asynchronous invocation carrying it (`GET /v1/async-invocations/{id}`).
    pub id: String,
}

/// Answer to a publish (202): the event's id and one delivery per subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Published {
    pub id: String,
    pub deliveries: Vec<Delivery>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base() {
        let c = AsyncConfig { retry_delay_ms: 100, ..AsyncConfig::default() };
        assert_eq!([c.backoff_ms(1), c.backoff_ms(2), c.backoff_ms(3)], [100, 200, 400]);
    }

    #[test]
    fn ranges_are_checked() {
        assert!(AsyncConfig::default().validate().is_ok());
        assert!(AsyncConfig { max_retries: 3, ..AsyncConfig::default() }.validate().is_err());
        assert!(AsyncConfig { max_event_age_s: 59, ..AsyncConfig::default() }.validate().is_err());
        assert!(AsyncConfig { retry_delay_ms: 5, ..AsyncConfig::default() }.validate().is_err());
        assert!(AsyncConfig { on_failure: Some("Bad Name".into()), ..AsyncConfig::default() }.validate().is_err());
        assert!(idempotency_key("order-42").is_ok());
        assert!(idempotency_key("has space").is_err());
        assert!(idempotency_key("").is_err());
    }

    #[test]
    fn triggers_need_one_source_and_one_target() {
        let cron =
            TriggerConfig { cron: Some("* * * * *".into()), timezone: None, topic: None, function: Some("f".into()), service: None, path: None, data: None };
        assert!(cron.validate().is_ok());
        assert!(TriggerConfig { topic: Some("t".into()), ..cron.clone() }.validate().is_err());
        assert!(TriggerConfig { service: Some("s".into()), ..cron.clone() }.validate().is_err());
        assert!(TriggerConfig { path: Some("/x".into()), ..cron.clone() }.validate().is_err());
        let topic = TriggerConfig {
            cron: None,
            topic: Some("orders.created".into()),
            function: None,
            service: Some("web".into()),
            path: Some("/events".into()),
            ..cron.clone()
        };
        assert!(topic.validate().is_ok());
        assert!(TriggerConfig { path: Some("events".into()), ..topic.clone() }.validate().is_err());
        assert!(TriggerConfig { topic: Some("Orders!".into()), ..topic.clone() }.validate().is_err());
        assert!(TriggerConfig { timezone: Some("UTC".into()), ..topic }.validate().is_err());
    }
}
