//! Triggers: cron schedules and topic subscriptions, turned into events on the durable queue.
//!
//! A cron trigger queues one CloudEvent per scheduled time, keyed by that time (so a time is
//! never queued twice) and remembers the last scheduled time it queued. Times missed for less
//! than [`CATCH_UP`] (a restart, a lease moving to another node) each fire late; times missed
//! longer ago (the cluster was down) collapse into one event for the latest of them. Publishing
//! to a topic queues one CloudEvent per subscription in the namespace. Events reach functions
//! and services in CloudEvents' structured mode (`application/cloudevents+json`).

use std::collections::HashMap;
use std::str::FromStr as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::TimeZone as _;
use hangar_api::events::{Delivery, TriggerConfig};
use hangar_api::{now_ms, rfc3339};
use hangar_store::{Store, StoreError, TriggerRow};
use tokio::sync::Notify;

use crate::queue::{AsyncQueue, EventsError, Target};

/// Content type of a structured-mode CloudEvent.
pub const CLOUDEVENT_JSON: &str = "application/cloudevents+json";

/// A parsed cron schedule in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: croner::Cron,
    tz: chrono_tz::Tz,
}

impl Schedule {
    /// Parses a 5-field (or 6-field, seconds first) expression and an IANA zone (UTC if none).
    pub fn parse(expr: &str, timezone: Option<&str>) -> Result<Schedule, String> {
        let fields = expr.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!("`{expr}` has {fields} fields; give 5 (minute hour day-of-month month day-of-week) or 6 (seconds first)"));
        }
        // A list with an empty item (`,`, `1,,2`) parses as matching nothing, and the search for
        // its next time then runs for years of candidates (found by fuzzing).
        if let Some(field) = expr.split_whitespace().find(|f| f.split(',').any(str::is_empty)) {
            return Err(format!("`{expr}`: the field `{field}` has an empty item in its list; write values between the commas"));
        }
        let parser = croner::parser::CronParser::builder().seconds(croner::parser::Seconds::Optional).year(croner::parser::Year::Disallowed).build();
        let cron = parser.parse(expr).map_err(|e| format!("`{expr}` is not a cron expression: {e}"))?;
        let tz = match timezone {
            None => chrono_tz::UTC,
            Some(z) => chrono_tz::Tz::from_str(z).map_err(|_| format!("`{z}` is not an IANA time zone (e.g. Europe/Berlin, America/New_York, UTC)"))?,
        };
        Ok(Schedule { cron, tz })
    }

    /// The first scheduled time strictly after `ms` (Unix ms).
    pub fn next_after(&self, ms: i64) -> Option<i64> {
        let at = self.tz.timestamp_millis_opt(ms).single()?;
        self.cron.find_next_occurrence(&at, false).ok().map(|t| t.timestamp_millis())
    }

    /// The last scheduled time at or before `ms`.
    fn latest_until(&self, ms: i64) -> Option<i64> {
        let at = self.tz.timestamp_millis_opt(ms).single()?;
        self.cron.find_previous_occurrence(&at, true).ok().map(|t| t.timestamp_millis())
    }
}

/// What a request to publish carries besides the data.
#[derive(Debug, Clone, Default)]
pub struct EventMeta {
    /// `ce-id`; also makes publishing the same id twice deliver once.
    pub id: Option<String>,
    pub kind: Option<String>,
    pub source: Option<String>,
    pub content_type: Option<String>,
}

impl EventMeta {
    /// Reads a publish request's headers as CloudEvents' binary mode has them (`ce-id`,
    /// `ce-type`, `ce-source`, `content-type`), each checked: an id is an idempotency key (1 to
    /// 256 printable characters), a type or source 1 to 1024 characters. Outside input: fuzzed by
    /// `fuzz/fuzz_targets/cloudevent.rs`.
    pub fn from_headers(headers: &http::HeaderMap) -> Result<EventMeta, hangar_api::validate::Invalid> {
        let header = |name: &str| -> Result<Option<String>, hangar_api::validate::Invalid> {
            match headers.get(name) {
                None => Ok(None),
                Some(v) => v.to_str().map(|s| Some(s.to_string())).map_err(|_| hangar_api::validate::Invalid::new(name, "must be printable ASCII text")),
            }
        };
        let meta = EventMeta { id: header("ce-id")?, kind: header("ce-type")?, source: header("ce-source")?, content_type: header("content-type")? };
        if let Some(id) = &meta.id {
            hangar_api::events::idempotency_key(id).map_err(|e| hangar_api::validate::Invalid::new("ce-id", e.message))?;
        }
        for (h, v) in [("ce-type", &meta.kind), ("ce-source", &meta.source)] {
            if v.as_ref().is_some_and(|v| v.is_empty() || v.len() > 1024) {
                return Err(hangar_api::validate::Invalid::new(h, "must be 1 to 1024 characters"));
            }
        }
        Ok(meta)
    }
}

struct Entry {
    row: TriggerRow,
    schedule: Option<Schedule>,
}

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct Triggers {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    queue: AsyncQueue,
    table: Mutex<HashMap<(String, String), Entry>>,
    wake: Notify,
}

fn target_of(c: &TriggerConfig) -> Target {
    match (&c.function, &c.service) {
        (Some(f), _) => Target::function(f),
        (None, s) => Target::service(s.as_deref().unwrap_or_default(), c.path.as_deref().unwrap_or("/")),
    }
}

impl Triggers {
    /// Loads every trigger; nothing fires before [`Triggers::run`].
    pub async fn open(store: Arc<dyn Store>, queue: AsyncQueue) -> Result<Triggers, StoreError> {
        let rows = store.list_triggers(None).await?;
        let t = Triggers { inner: Arc::new(Inner { store, queue, table: Mutex::default(), wake: Notify::new() }) };
        for row in rows {
            t.install(row);
        }
        Ok(t)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Entry>> {
        self.inner.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The loop that fires schedules (first catching up on times missed while stopped), while
    /// `holder` holds the cron lease of `leases`: however many servers run, one fires. It
    /// sleeps until the next time is due or a trigger changes; it ends when dropped.
    pub fn cron(&self, leases: Arc<dyn hangar_bus::Leases>, holder: String) -> impl Future<Output = ()> + Send + 'static {
        cron_loop(self.clone(), leases, holder)
    }

    /// Adds or replaces a trigger (already validated and stored).
    pub fn install(&self, row: TriggerRow) {
        let schedule = row.config.cron.as_deref().and_then(|c| match Schedule::parse(c, row.config.timezone.as_deref()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(trigger = %row.name, "stored schedule does not parse: {e}");
                None
            }
        });
        let mut table = self.table();
        // A replaced schedule keeps when it last fired.
        let last = table.get(&(row.namespace.clone(), row.name.clone())).and_then(|e| e.row.last_fired_ms);
        let mut row = row;
        row.last_fired_ms = row.last_fired_ms.or(last);
        table.insert((row.namespace.clone(), row.name.clone()), Entry { row, schedule });
        drop(table);
        self.inner.wake.notify_one();
    }

    pub fn remove(&self, namespace: &str, name: &str) {
        self.table().remove(&(namespace.to_string(), name.to_string()));
    }

    /// Brings one trigger of the table up to date with the store (installed as stored, or
    /// removed when it is gone).
    async fn refresh(&self, namespace: &str, name: &str) {
        match self.inner.store.list_triggers(Some(namespace)).await {
            Ok(rows) => match rows.into_iter().find(|r| r.name == name) {
                Some(row) => self.install(row),
                None => self.remove(namespace, name),
            },
            Err(e) => tracing::error!(%namespace, trigger = %name, "reading the trigger failed ({e}); it stays as it was"),
        }
    }

    /// When and what fired last, and when a schedule fires next.
    pub fn times(&self, namespace: &str, name: &str) -> (Option<i64>, Option<i64>) {
        let table = self.table();
        let Some(e) = table.get(&(namespace.to_string(), name.to_string())) else { return (None, None) };
        let from = e.row.last_fired_ms.unwrap_or(e.row.created_ms).max(now_ms());
        (e.row.last_fired_ms, e.schedule.as_ref().and_then(|s| s.next_after(from)))
    }

    /// Whether any trigger of the namespace subscribes to `topic`.
    pub fn has_topic(&self, namespace: &str, topic: &str) -> bool {
        self.table().values().any(|e| e.row.namespace == namespace && e.row.config.topic.as_deref() == Some(topic))
    }

    /// Queues the event for every subscription of `topic` in the namespace. Returns the
    /// event's id and the deliveries (empty when nothing subscribes).
    /// `parent`: the span of the publish (each delivery continues its trace).
    pub async fn publish(
        &self,
        namespace: &str,
        topic: &str,
        data: Bytes,
        meta: EventMeta,
        parent: Option<hangar_trace::SpanContext>,
    ) -> Result<(String, Vec<Delivery>), EventsError> {
        let subs: Vec<(String, Target)> = self
            .table()
            .values()
            .filter(|e| e.row.namespace == namespace && e.row.config.topic.as_deref() == Some(topic))
            .map(|e| (e.row.name.clone(), target_of(&e.row.config)))
            .collect();
        let id = meta.id.clone().unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let source = meta.source.clone().unwrap_or_else(|| format!("/hangar/{namespace}/topics/{topic}"));
        let kind = meta.kind.clone().unwrap_or_else(|| format!("dev.hangar.topic.{topic}"));
        let event = cloudevent(&id, &source, &kind, now_ms(), meta.content_type.as_deref(), &data);
        // Accepts issued together share the queue's transaction.
        let accepts = subs.iter().map(|(trigger, target)| {
            let key = Some(format!("topic:{topic}:{id}:{trigger}"));
            self.inner.queue.accept(namespace, target, event.clone(), Some(CLOUDEVENT_JSON.into()), key, parent)
        });
        let held = futures::future::join_all(accepts).await;
        let mut deliveries = Vec::new();
        for ((trigger, target), r) in subs.into_iter().zip(held) {
            let (qid, _) = r?;
            deliveries.push(Delivery { trigger, kind: target.kind, target: target.name, id: qid });
        }
        Ok((id, deliveries))
    }
}

/// The trigger table as a subscriber of the change bus.
#[async_trait::async_trait]
impl hangar_bus::Subscriber for Triggers {
    async fn apply(&self, change: &hangar_bus::Change) {
        match change {
            hangar_bus::Change::Trigger { namespace, name } => self.refresh(namespace, name).await,
            hangar_bus::Change::Everything => match self.inner.store.list_triggers(None).await {
                Ok(rows) => {
                    let stored: std::collections::HashSet<(String, String)> = rows.iter().map(|r| (r.namespace.clone(), r.name.clone())).collect();
                    self.table().retain(|k, _| stored.contains(k));
                    rows.into_iter().for_each(|r| self.install(r));
                }
                Err(e) => tracing::error!("reading the triggers failed ({e}); they stay as they were"),
            },
            _ => {}
        }
    }
}

/// A structured-mode CloudEvent (spec 1.0) around `data`: JSON data stays JSON, byte for byte
/// (numbers keep every digit), other UTF-8 text becomes a string, anything else (and data
/// declared JSON that does not parse) `data_base64`.
pub fn cloudevent(id: &str, source: &str, kind: &str, time_ms: i64, content_type: Option<&str>, data: &[u8]) -> Bytes {
    #[derive(serde::Serialize)]
    struct Event<'a> {
        specversion: &'static str,
        id: &'a str,
        source: &'a str,
        #[serde(rename = "type")]
        kind: &'a str,
        time: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        datacontenttype: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<Data<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        data_base64: Option<String>,
    }
    #[derive(serde::Serialize)]
    #[serde(untagged)]
    enum Data<'a> {
        Json(&'a serde_json::value::RawValue),
        Text(&'a str),
    }
    let mut ev = Event { specversion: "1.0", id, source, kind, time: rfc3339(time_ms), datacontenttype: None, data: None, data_base64: None };
    let declared_json = content_type.is_some_and(|c| c.starts_with("application/json") || c.contains("+json"));
    let json_like = content_type.is_none() || declared_json;
    // JSON that a strict reader takes (`1e999` is JSON text but no f64: many readers refuse
    // it), kept as its own text.
    let raw = if json_like && serde_json::from_slice::<serde_json::Value>(data).is_ok() {
        serde_json::from_slice::<&serde_json::value::RawValue>(data).ok()
    } else {
        None
    };
    if data.is_empty() {
    } else if let Some(raw) = raw {
        ev.datacontenttype = Some("application/json");
        ev.data = Some(Data::Json(raw));
    } else if let (false, Ok(text)) = (declared_json, std::str::from_utf8(data)) {
        // (Data declared JSON that is not goes as bytes: as a string it would read as JSON.)
        ev.datacontenttype = Some(content_type.unwrap_or("text/plain"));
        ev.data = Some(Data::Text(text));
    } else {
        use base64::Engine as _;
        ev.datacontenttype = Some(content_type.unwrap_or("application/octet-stream"));
        ev.data_base64 = Some(base64::engine::general_purpose::STANDARD.encode(data));
    }
    // Serializing these fields cannot fail.
    Bytes::from(serde_json::to_vec(&ev).unwrap_or_default())
}

/// The lease under which schedules fire, and how long a holder keeps it without renewing.
const CRON_LEASE: &str = "cron";
const CRON_LEASE_TTL: Duration = Duration::from_secs(10);
/// Missed times younger than this each fire; older ones collapse into one.
pub const CATCH_UP: Duration = Duration::from_secs(60);
/// Most times of one schedule fired in one round (the rest in the next).
const MOST_PER_ROUND: usize = 100;

/// The times of `s` after `from` and at or before `now` to fire now, oldest first: each of the
/// last [`CATCH_UP`], and before that only the latest (long-missed times collapse into one).
fn due_times(s: &Schedule, from: i64, now: i64) -> Vec<i64> {
    let mut out = Vec::new();
    let Some(first) = s.next_after(from) else { return out };
    if first > now {
        return out;
    }
    let mut cursor = from;
    let recent = now - CATCH_UP.as_millis() as i64;
    if first < recent {
        let old = s.latest_until(recent).unwrap_or(first).max(first);
        out.push(old);
        cursor = old;
    }
    while let Some(at) = s.next_after(cursor).filter(|at| *at <= now && out.len() < MOST_PER_ROUND) {
        out.push(at);
        cursor = at;
    }
    out
}

/// Fires due schedules; sleeps until the next one is due or the table changes (at most a third
/// of the lease's time, so the holder renews it).
async fn cron_loop(t: Triggers, leases: Arc<dyn hangar_bus::Leases>, holder: String) {
    let mut held = false;
    loop {
        let notified = t.inner.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !leases.acquire(CRON_LEASE, &holder, CRON_LEASE_TTL).await {
            // Another node fires the schedules; look again when its lease may have run out.
            held = false;
            tokio::time::sleep(CRON_LEASE_TTL / 3).await;
            continue;
        }
        if !held {
            // Taken over: the last holder's fired times are in the store, not in this table.
            held = true;
            hangar_bus::Subscriber::apply(&t, &hangar_bus::Change::Everything).await;
        }
        let now = now_ms();
        // (namespace, name, scheduled time, target, data) of every schedule due now.
        let mut due = Vec::new();
        let mut next: Option<i64> = None;
        for e in t.table().values() {
            let Some(s) = &e.schedule else { continue };
            let from = e.row.last_fired_ms.unwrap_or(e.row.created_ms);
            let times = due_times(s, from, now);
            if times.is_empty()
                && let Some(at) = s.next_after(from)
            {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
            for at in times {
                due.push((e.row.namespace.clone(), e.row.name.clone(), at, target_of(&e.row.config), e.row.config.data.clone()));
            }
        }
        let fired = !due.is_empty();
        for (ns, name, at, target, data) in due {
            let id = uuid::Uuid::now_v7().to_string();
            let data = data.unwrap_or_else(|| serde_json::json!({})).to_string();
            let event = cloudevent(&id, &format!("/hangar/{ns}/triggers/{name}"), "dev.hangar.cron", at, None, data.as_bytes());
            let key = Some(format!("cron:{name}:{at}"));
            // A fire starts a new trace.
            match t.inner.queue.accept(&ns, &target, event, Some(CLOUDEVENT_JSON.into()), key, None).await {
                Ok(_) => {
                    if let Some(e) = t.table().get_mut(&(ns.clone(), name.clone())) {
                        e.row.last_fired_ms = Some(at);
                    }
                    if let Err(e) = t.inner.store.set_trigger_fired(&ns, &name, at).await {
                        tracing::error!(trigger = %name, "recording when the trigger fired: {e}");
                    }
                }
                Err(EventsError::Stopping) => return,
                Err(e) => {
                    tracing::error!(trigger = %name, "queueing the scheduled event failed: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        if fired {
            // Their next times are due to be computed from the new last-fired times.
            continue;
        }
        let wait = next.map_or(CRON_LEASE_TTL / 3, |n| Duration::from_millis(u64::try_from(n - now_ms()).unwrap_or(0)).min(CRON_LEASE_TTL / 3));
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_api::events::TargetKind;

    #[test]
    fn schedules_parse_five_or_six_fields_in_a_time_zone() {
        let every_5s = Schedule::parse("*/5 * * * * *", None).unwrap();
        assert_eq!(every_5s.next_after(1_000), Some(5_000));
        let hourly = Schedule::parse("0 * * * *", Some("Asia/Kolkata")).unwrap();
        // Kolkata is UTC+5:30: its whole hours are half past in UTC.
        assert_eq!(hourly.next_after(0), Some(30 * 60 * 1000));
        assert_eq!(hourly.latest_until(2 * 3600 * 1000), Some(90 * 60 * 1000));
        assert!(Schedule::parse("* * *", None).unwrap_err().contains("3 fields"));
        assert!(Schedule::parse("61 * * * *", None).is_err());
        // An empty list item matched nothing and sent the next-time search through years.
        assert!(Schedule::parse(",  *\t* * 0", None).unwrap_err().contains("empty item"));
        assert!(Schedule::parse("1,,2 * * * *", None).is_err());
        assert!(Schedule::parse("* * * * *", Some("Mars/Olympus")).unwrap_err().contains("IANA"));
    }

    #[test]
    fn recently_missed_times_each_fire_and_long_missed_ones_collapse() {
        let every_second = Schedule::parse("* * * * * *", None).unwrap();
        let now = 1_000_000_000;
        // Nothing due yet.
        assert!(due_times(&every_second, now, now).is_empty());
        // Five seconds missed (a restart, a lease moving): each fires, in order.
        assert_eq!(due_times(&every_second, now - 5_000, now), [now - 4_000, now - 3_000, now - 2_000, now - 1_000, now]);
        // An hour missed: one event for the older times, then each of the last minute (up to
        // the round's bound).
        let times = due_times(&every_second, now - 3_600_000, now);
        let recent = now - CATCH_UP.as_millis() as i64;
        assert_eq!(times[0], recent, "the older times collapse into their latest");
        assert_eq!(times[1], recent + 1_000);
        assert_eq!(times.len(), 61);
        assert!(times.windows(2).all(|w| w[0] < w[1]));
        let daily = Schedule::parse("0 0 * * *", None).unwrap();
        assert_eq!(due_times(&daily, 0, 10 * 86_400_000 + 300_000), [10 * 86_400_000], "ten missed days fire once");
    }

    #[test]
    fn cloudevents_keep_json_text_and_bytes() {
        let ev = |ct: Option<&str>, d: &[u8]| serde_json::from_slice::<serde_json::Value>(&cloudevent("1", "/s", "t", 0, ct, d)).unwrap();
        let j = ev(Some("application/json"), br#"{"a":1}"#);
        assert_eq!((j["specversion"].as_str(), j["data"]["a"].as_i64()), (Some("1.0"), Some(1)));
        assert_eq!(ev(Some("text/plain"), b"hi")["data"], "hi");
        assert_eq!(ev(None, &[0xff, 0x00, 0x01])["data_base64"], "/wAB");
        // Declared JSON but not JSON (found by fuzzing): kept as bytes, not passed off as a
        // JSON string.
        let bad = ev(Some("application/json"), b"{not json");
        assert_eq!((bad["data_base64"].as_str(), bad.get("data")), (Some("e25vdCBqc29u"), None));
        assert_eq!(ev(None, b"plain words")["data"], "plain words");
        // JSON data is kept byte for byte: a number past u64 keeps every digit (found by fuzzing).
        let big = cloudevent("1", "/s", "t", 0, None, b" 111112222222222222222");
        assert!(std::str::from_utf8(&big).unwrap().contains(r#""data":111112222222222222222"#), "{big:?}");
        // A number no reader takes is not passed on as JSON.
        assert_eq!(ev(None, b"1e999")["data"], "1e999");
    }

    #[test]
    fn targets_come_from_the_config() {
        let c = TriggerConfig { cron: None, timezone: None, topic: Some("t".into()), function: None, service: Some("web".into()), path: None, data: None };
        assert_eq!(target_of(&c), Target::service("web", "/"));
        assert_eq!(target_of(&TriggerConfig { function: Some("f".into()), service: None, ..c }).kind, TargetKind::Function);
    }
}
