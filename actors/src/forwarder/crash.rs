//! Injected crashes at named points of a batch, for fault tests: armed by a test, each
//! armed point makes the forwarder fail once when it gets there. Inert unless armed.

use std::sync::Mutex;

use super::ForwardError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// The batch is read (delivered, pending in the consumer group), nothing sent.
    BeforeCommit,
    /// The primary committed the batch; Redis has not been told.
    AfterCommit,
    /// Redis acknowledged the batch.
    AfterAck,
}

#[derive(Debug, Default)]
pub struct CrashPoints {
    armed: Mutex<Vec<CrashPoint>>,
}

impl CrashPoints {
    pub fn arm(&self, point: CrashPoint) {
        self.armed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(point);
    }

    /// Fails once if `point` is armed.
    pub fn check(&self, point: CrashPoint) -> Result<(), ForwardError> {
        let mut armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        match armed.iter().position(|p| *p == point) {
            Some(i) => {
                armed.remove(i);
                Err(ForwardError::InjectedCrash(point))
            }
            None => Ok(()),
        }
    }

    pub fn pending(&self) -> usize {
        self.armed.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}
