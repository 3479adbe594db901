//! Single-flight: concurrent misses on the same key share one fetch. The first caller
//! becomes the leader and fetches; the others wait for its result.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Condvar, Mutex};

type Outcome<V> = Option<Result<V, String>>;

struct Slot<V> {
    outcome: Mutex<Outcome<V>>,
    done: Condvar,
}

/// Either the caller leads the fetch for a key, or it waits for the leader.
pub enum Role<K: Eq + Hash + Clone, V: Clone> {
    Leader(Lead<K, V>),
    Follower(Follow<V>),
}

/// The in-flight table.
pub struct Flights<K, V> {
    table: Arc<Mutex<HashMap<K, Arc<Slot<V>>>>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Default for Flights<K, V> {
    fn default() -> Self {
        Self {
            table: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Flights<K, V> {
    /// Join the flight for `key`, leading it if none is under way.
    pub fn join(&self, key: K) -> Role<K, V> {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = t.get(&key) {
            return Role::Follower(Follow { slot: slot.clone() });
        }
        let slot = Arc::new(Slot {
            outcome: Mutex::new(None),
            done: Condvar::new(),
        });
        t.insert(key.clone(), slot.clone());
        Role::Leader(Lead {
            key,
            slot,
            table: self.table.clone(),
            finished: false,
        })
    }
}

/// The leader's duty: finish the flight. Dropping it unfinished fails the followers.
pub struct Lead<K: Eq + Hash, V> {
    key: K,
    slot: Arc<Slot<V>>,
    table: Arc<Mutex<HashMap<K, Arc<Slot<V>>>>>,
    finished: bool,
}

impl<K: Eq + Hash, V> Lead<K, V> {
    pub fn finish(mut self, outcome: Result<V, String>) {
        self.complete(outcome);
    }

    fn complete(&mut self, outcome: Result<V, String>) {
        self.finished = true;
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
        *self.slot.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
        self.slot.done.notify_all();
    }
}

impl<K: Eq + Hash, V> Drop for Lead<K, V> {
    fn drop(&mut self) {
        if !self.finished {
            self.complete(Err("the fetch was abandoned".into()));
        }
    }
}

/// A follower waits for the leader's outcome.
pub struct Follow<V> {
    slot: Arc<Slot<V>>,
}

impl<V: Clone> Follow<V> {
    pub fn wait(self) -> Result<V, String> {
        let mut g = self.slot.outcome.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(o) = g.as_ref() {
                return o.clone();
            }
            g = self.slot.done.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followers_get_the_leaders_result_and_abandonment_fails_them() {
        let f: Flights<u32, u32> = Flights::default();
        let Role::Leader(lead) = f.join(1) else {
            panic!()
        };
        let Role::Follower(follow) = f.join(1) else {
            panic!()
        };
        let h = std::thread::spawn(move || follow.wait());
        lead.finish(Ok(7));
        assert_eq!(h.join().unwrap(), Ok(7));
        let Role::Leader(lead) = f.join(1) else {
            panic!("finished flights are gone")
        };
        let Role::Follower(follow) = f.join(1) else {
            panic!()
        };
        drop(lead);
        assert!(follow.wait().is_err());
    }
}
