//! A value tasks wait on, whose waiters wake in the order they began to wait.
//!
//! What tokio's `watch` does, minus its randomness: `watch` spreads its waiters over shards
//! it picks at random, so the order in which they wake (and so the whole run) would differ
//! between two runs of one seed.

use std::pin::pin;
use std::sync::Mutex;

use tokio::sync::Notify;

pub struct Signal<T> {
    value: Mutex<T>,
    changed: Notify,
}

impl<T> Signal<T> {
    pub fn new(value: T) -> Signal<T> {
        Signal {
            value: Mutex::new(value),
            changed: Notify::new(),
        }
    }

    /// Looks at the value.
    pub fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.value.lock().expect("signal value"))
    }

    /// Changes the value and wakes every waiter.
    pub fn update(&self, f: impl FnOnce(&mut T)) {
        f(&mut self.value.lock().expect("signal value"));
        self.changed.notify_waiters();
    }

    /// Waits until `ready` holds for the value.
    pub async fn wait_for(&self, ready: impl Fn(&T) -> bool) {
        loop {
            let mut changed = pin!(self.changed.notified());
            // Registered before the look, so a change between the two is not missed.
            changed.as_mut().enable();
            if self.with(&ready) {
                return;
            }
            changed.await;
        }
    }
}
