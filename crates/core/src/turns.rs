//! [`Turns`]: work on one thing at a time, per thing, while work on different things runs side by
//! side (the bus applying changes, the services table converging a service).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// A turn per key; a key's entry lives while somebody holds or waits for its turn.
#[derive(Debug)]
pub struct Turns<K> {
    turns: Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>,
}

impl<K> Default for Turns<K> {
    fn default() -> Self {
        Turns { turns: Mutex::default() }
    }
}

impl<K: Eq + Hash + Clone> Turns<K> {
    /// Runs `work` once every earlier work on `key` has ended.
    pub async fn run<T>(&self, key: K, work: impl Future<Output = T>) -> T {
        let turn = self.turns.lock().unwrap_or_else(|p| p.into_inner()).entry(key.clone()).or_default().clone();
        let out = {
            let _turn = turn.lock().await;
            work.await
        };
        let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        // Ours and the map's: nobody else holds or waits for this turn.
        if Arc::strong_count(&turn) == 2 {
            turns.remove(&key);
        }
        out
    }

    /// How many keys have work running or waiting.
    pub fn busy(&self) -> usize {
        self.turns.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// How many works hold or wait for `key`'s turn.
    pub fn waiting(&self, key: &K) -> usize {
        self.turns.lock().unwrap_or_else(|p| p.into_inner()).get(key).map_or(0, |t| Arc::strong_count(t) - 1)
    }
}
