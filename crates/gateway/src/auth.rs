//! API keys: generation, the in-memory key table (no database on the request path), and the
//! extractor that turns `Authorization: Bearer <key>` into a [`Principal`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use hangar_store::KeyRow;

use crate::AppState;
use crate::error::ApiError;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    /// `None`: an admin key, which may act in every namespace.
    pub namespace: Option<String>,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.namespace.is_none()
    }

    /// May this caller see and touch `namespace`?
    pub fn can_access(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|own| own == namespace)
    }

    /// The namespace a request acts in: the one asked for, checked, or the caller's own.
    /// Another namespace's resources are "not found", never "forbidden", so names don't leak.
    pub fn scope(&self, asked: Option<&str>) -> Result<String, ApiError> {
        match (asked, &self.namespace) {
            (Some(ns), _) if self.can_access(ns) => Ok(ns.to_string()),
            (Some(ns), _) => Err(ApiError::not_found(format_args!("namespace `{ns}`"))),
            (None, Some(own)) => Ok(own.clone()),
            (None, None) => Ok(hangar_api::DEFAULT_NAMESPACE.to_string()),
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() { Ok(()) } else { Err(ApiError::forbidden("this call needs an admin key; namespace keys manage only their own functions")) }
    }
}

pub use hangar_control::{hash_secret, new_secret};

/// The key table, keyed by secret hash.
#[derive(Clone, Default)]
pub struct KeyCache {
    by_hash: Arc<RwLock<HashMap<String, Principal>>>,
}

impl KeyCache {
    /// Replaces the whole table with `rows`.
    pub fn replace(&self, rows: &[KeyRow]) {
        let table = rows.iter().map(|r| (r.hash.clone(), Principal { key_id: r.id.clone(), namespace: r.namespace.clone() })).collect();
        *self.by_hash.write().unwrap_or_else(|p| p.into_inner()) = table;
    }

    pub fn lookup(&self, secret: &str) -> Option<Principal> {
        let hash = hash_secret(secret);
        self.by_hash.read().unwrap_or_else(|p| p.into_inner()).get(&hash).cloned()
    }
}

/// The key table as a subscriber of the change bus: a change of the keys (or of a namespace,
/// whose keys go with it) reloads the table from the store.
pub struct KeyInformer {
    pub store: Arc<dyn hangar_store::Store>,
    pub keys: KeyCache,
}

#[async_trait::async_trait]
impl hangar_bus::Subscriber for KeyInformer {
    async fn apply(&self, change: &hangar_bus::Change) {
        if matches!(change, hangar_bus::Change::Keys | hangar_bus::Change::Namespace { .. } | hangar_bus::Change::Everything) {
            match self.store.list_keys().await {
                Ok(rows) => self.keys.replace(&rows),
                Err(e) => tracing::error!("reading the keys failed ({e}); the key table stays as it was"),
            }
        }
    }
}

/// What the `Authorization` header says, if anything.
pub enum Credentials {
    Missing,
    Invalid,
    Valid(Principal),
}

impl Credentials {
    pub fn from_headers(headers: &http::HeaderMap, keys: &KeyCache) -> Self {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else { return Credentials::Missing };
        let secret = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
        match secret.and_then(|s| keys.lookup(s)) {
            Some(p) => Credentials::Valid(p),
            None => Credentials::Invalid,
        }
    }

    pub fn require(self) -> Result<Principal, ApiError> {
        match self {
            Credentials::Valid(p) => Ok(p),
            Credentials::Missing => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing API key: send `Authorization: Bearer <key>` (the admin key is in <data-dir>/admin.key)",
            )),
            Credentials::Invalid => {
                Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "invalid API key: it is unknown or was deleted; check HANGAR_KEY or --key"))
            }
        }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Credentials::from_headers(&parts.headers, &state.keys).require()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        let admin = Principal { key_id: "a".into(), namespace: None };
        let team = Principal { key_id: "t".into(), namespace: Some("team".into()) };
        assert_eq!(admin.scope(None).unwrap(), "default");
        assert_eq!(admin.scope(Some("team")).unwrap(), "team");
        assert_eq!(team.scope(None).unwrap(), "team");
        assert_eq!(team.scope(Some("team")).unwrap(), "team");
        assert_eq!(team.scope(Some("default")).unwrap_err().status, StatusCode::NOT_FOUND);
        assert!(team.require_admin().is_err());
    }

    #[test]
    fn keys_are_looked_up_by_hash() {
        let secret = new_secret();
        let row = KeyRow { id: "k1".into(), hash: hash_secret(&secret), namespace: Some("x".into()), name: None, created_ms: 0 };
        let cache = KeyCache::default();
        cache.replace(&[row]);
        assert_eq!(cache.lookup(&secret).unwrap().key_id, "k1");
        assert!(cache.lookup("hk_wrong").is_none());
        cache.replace(&[]);
        assert!(cache.lookup(&secret).is_none());
    }

    #[tokio::test]
    async fn the_key_table_follows_the_store_through_the_bus() {
        use hangar_bus::Bus as _;
        let store: Arc<dyn hangar_store::Store> = Arc::new(hangar_store_sqlite::SqliteStore::in_memory().unwrap());
        let keys = KeyCache::default();
        let bus = hangar_bus::LocalBus::new();
        bus.subscribe(Arc::new(KeyInformer { store: store.clone(), keys: keys.clone() }));
        let secret = new_secret();
        store.insert_key(&KeyRow { id: "k1".into(), hash: hash_secret(&secret), namespace: None, name: None, created_ms: 0 }).await.unwrap();
        assert!(keys.lookup(&secret).is_none(), "not before the change is published");
        bus.publish(hangar_bus::Change::Keys).await;
        assert_eq!(keys.lookup(&secret).unwrap().key_id, "k1");
        store.delete_key("k1").await.unwrap();
        bus.publish(hangar_bus::Change::Everything).await;
        assert!(keys.lookup(&secret).is_none());
    }
}
