//! How many instances of a process function may live: the cap is the scheduler's, kept in a
//! [`Capacity`]. A runtime reserves a [`Room`] before it makes an instance and the instance
//! holds it until it ends; a runtime never compares against `max_instances` itself. Where an
//! invocation runs when it arrives is [`pick`], a pure function of what is free.
//!
//! The rules: an idle instance first (the most recently used: see `reaping`), then the spare
//! made ahead of demand, then a new instance while fewer than `max_instances` live; otherwise
//! the invocation waits for one to come free, at most as long as it could run (its timeout),
//! and is then throttled.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// The live instances of one function, under its cap.
#[derive(Debug, Clone)]
pub struct Capacity {
    live: Arc<AtomicU32>,
    max: u32,
}

/// One instance's place under the cap, given back when dropped.
#[derive(Debug)]
pub struct Room(Arc<AtomicU32>);

impl Drop for Room {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Capacity {
    pub fn new(max_instances: u32) -> Capacity {
        Capacity { live: Arc::default(), max: max_instances }
    }

    /// A place for one more instance, or `None` when `max_instances` live.
    pub fn reserve(&self) -> Option<Room> {
        let before = self.live.fetch_add(1, Ordering::AcqRel);
        let room = Room(self.live.clone());
        (before < self.max).then_some(room)
    }

    /// Instances that live now (idle, busy, starting or spare).
    pub fn live(&self) -> u32 {
        self.live.load(Ordering::Acquire)
    }

    pub fn max(&self) -> u32 {
        self.max
    }
}

/// What is free when an invocation arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Free {
    pub idle: bool,
    pub spare: bool,
}

/// Where the invocation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Idle,
    Spare,
    /// A new instance, if [`Capacity::reserve`] gives room; otherwise wait.
    New,
}

/// See the module docs.
pub fn pick(free: Free) -> Pick {
    match free {
        Free { idle: true, .. } => Pick::Idle,
        Free { spare: true, .. } => Pick::Spare,
        _ => Pick::New,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_live_under_the_cap_and_give_their_room_back() {
        let c = Capacity::new(2);
        let a = c.reserve().expect("room for the first");
        let b = c.reserve().expect("room for the second");
        assert!(c.reserve().is_none(), "no third");
        assert_eq!(c.live(), 2, "a refused reservation leaves no trace");
        drop(a);
        let _c = c.reserve().expect("room again once one ended");
        drop(b);
        assert_eq!(c.live(), 1);
        assert!(Capacity::new(0).reserve().is_none());
    }

    #[test]
    fn idle_first_then_the_spare_then_a_new_one() {
        assert_eq!(pick(Free { idle: true, spare: true }), Pick::Idle);
        assert_eq!(pick(Free { idle: false, spare: true }), Pick::Spare);
        assert_eq!(pick(Free { idle: false, spare: false }), Pick::New);
    }
}
